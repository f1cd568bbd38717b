"""What every room stands on, importing no other room: the daemon's layout of the home
(`DaemonHome`), its settings and disk readings, the derived state files and how a damaged
one is set aside, the home lock, logging, counters, the cost throttle, systemd notification."""
