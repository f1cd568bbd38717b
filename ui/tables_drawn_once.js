// Each table of the dashboard drawn once, not three times (docs/benchmarks.md, "Pages switched
// in place"). Panel's Tabulator view (panel/models/tabulator.ts) starts Tabulator at once, and
// Tabulator builds the table on the next task, measuring every row's height, while the
// stylesheets of the table's shadow root (the theme, the design, the icons: <link> elements,
// new in each shadow root) are still loading. Panel then redraws the whole table twice: when
// they have loaded (`style_redraw`) and, always, once the table is built (`_resize_redraw`,
// meant for a size that changed). No option of the widget reaches either: the links are
// Panel's own and the second redraw is unconditional. So, here, in the browser:
//  - a table's build waits until its stylesheets have loaded or failed (Panel keeps the table
//    hidden until then anyway): it is measured once, with the styles it is shown with;
//  - a resize redraw is skipped when the table's box has kept the size it was last drawn at;
//  - within the build, Tabulator's second drawing of every row as the table grows is skipped
//    while the width its columns were laid out at holds.
// A redraw that a real change asks for (new stylesheets, another width, Panel's own calls)
// still happens. Loaded once a document from its head (ui/_widgets.TablesDrawnOnce), before
// Panel's bundle: installed once the head's scripts have run, before Bokeh draws any view.
(() => {
  const install = () => {
    const Model = window.Bokeh.Models.get("panel.models.tabulator.DataTabulator");
    const View = Model == null ? null : Model.prototype.default_view;
    const hooks = ["render", "tableBuilt", "redraw", "_resize_redraw", "getData"];
    if (View == null || window.Tabulator == null || typeof window.Tabulator.prototype._create !== "function" ||
        hooks.some((name) => typeof View.prototype[name] !== "function")) {
      // Another Panel or Tabulator than this was written against: tables drawn as Panel draws them.
      console.warn("stagewatch: Panel's Tabulator view is not the one expected; tables are drawn as Panel does");
      return;
    }
    if (View.prototype.stagewatchDrawnOnce) return;
    View.prototype.stagewatchDrawnOnce = true;
    const drawnSize = (view) => [view.container.clientWidth, view.container.clientHeight];

    // Tabulator's build, due on the next task, held back while its view waits for its styles.
    const create = window.Tabulator.prototype._create;
    window.Tabulator.prototype._create = function () {
      if (this.stagewatchAwaitsStyles) {
        this.stagewatchBuild = () => createOnce(this);
        return;
      }
      createOnce(this);
    };
    // A table of no fixed height grows as its first rows are drawn, and Tabulator then draws
    // every row again (RowManager.redraw, from adjustTableSize) in case the columns have to fit
    // another width. While the build lasts, at the width its columns were laid out at, that
    // second drawing is skipped: the table's size is still adjusted. A build at another width
    // (a scrollbar came) draws them again, as Tabulator does.
    const createOnce = (table) => {
      const rows = table.rowManager;
      if (rows == null || typeof rows.redraw !== "function" || typeof rows.adjustTableSize !== "function") {
        create.call(table);
        return;
      }
      const width = table.element.clientWidth;
      const redraw = rows.redraw;
      rows.redraw = function (force) {
        if (force || table.element.clientWidth !== width) return redraw.call(this, force);
        this.adjustTableSize();
        this.table.tableWidth = width;
        return false;
      };
      try {
        create.call(table);
      } finally {
        rows.redraw = redraw;
      }
    };

    const render = View.prototype.render;
    View.prototype.render = function () {
      render.call(this);
      const table = this.tabulator;
      const links = [...this.shadow_el.querySelectorAll("link[rel='stylesheet']")];
      const pending = links.filter((link) => link.sheet == null);
      if (table == null || pending.length === 0) return;
      table.stagewatchAwaitsStyles = true;
      let left = pending.length;
      const settled = () => {
        left -= 1;
        if (left > 0) return;
        table.stagewatchAwaitsStyles = false;
        const build = table.stagewatchBuild;
        table.stagewatchBuild = null;
        if (build != null && !table.destroyed) {
          table.options.data = this.getData(); // rows that came while it waited (Panel drops them while building)
          build();
        }
      };
      for (const link of pending) {
        link.addEventListener("load", settled, { once: true });
        link.addEventListener("error", settled, { once: true });
      }
    };

    const tableBuilt = View.prototype.tableBuilt;
    View.prototype.tableBuilt = function () {
      tableBuilt.call(this);
      this.stagewatchDrawn = drawnSize(this);
    };

    const redraw = View.prototype.redraw;
    View.prototype.redraw = function (...args) {
      redraw.apply(this, args);
      if (this.container != null) this.stagewatchDrawn = drawnSize(this);
    };

    const resizeRedraw = View.prototype._resize_redraw;
    View.prototype._resize_redraw = function () {
      const drawn = this.stagewatchDrawn;
      const unchanged =
        drawn != null && this.container != null && !this._initializing && !this._building &&
        drawnSize(this).every((length, axis) => length === drawn[axis]);
      if (!unchanged) {
        resizeRedraw.call(this);
        return;
      }
      // What _resize_redraw does besides the redraw (the scroll it keeps is unchanged).
      requestAnimationFrame(() => {
        this._initializing = false;
        if (this._selection_pending) this.setSelection();
        this.recompute_page_size();
      });
    };
  };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", install, { once: true });
  } else {
    install();
  }
})();
