"""Draw the Lymph Node Review panel to a PNG outside Slicer, filled with a real lnnode server's answer.

    ./run.sh demo                         # in another shell: the demo server on http://127.0.0.1:8000
    pip install PyQt5==5.15.11            # Qt 5.15 as in Slicer 5.6-5.8; only this tool needs it
    python tools/render_panel.py --server http://127.0.0.1:8000 --out docs/slicer_panel.png

What is real: the layout is the module's own ``Resources/UI/LymphNodeReview.ui`` loaded by Qt's uic, and
every text in it comes from the module's GUI-free core (``LymphNodeReviewLib``) talking to the server:
the connection line, the strategies, the next case, the pipeline's nodes in the table after a few
review edits, the case summary. What is not: Slicer's own widgets (``ctkCollapsibleButton``,
``qMRMLNodeComboBox``) are drawn by plain-Qt look-alikes and there are no slice views. It is a picture
of the panel, not a screenshot of Slicer.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "slicer_module" / "LymphNodeReview"
sys.path.insert(0, str(MODULE))

from LymphNodeReviewLib import LymphNodeServer, ReviewSession  # noqa: E402
from LymphNodeReviewLib.client import describe_server  # noqa: E402
from LymphNodeReviewLib.review import TABLE_COLUMNS, TABLE_HEADERS  # noqa: E402


def slicer_look_alikes() -> None:
    """Modules named after the .ui's custom-widget headers, holding plain-Qt stand-ins."""
    from PyQt5 import QtWidgets

    class ctkCollapsibleButton(QtWidgets.QGroupBox):  # noqa: N801 - the .ui's class name
        def setText(self, text: str) -> None:  # noqa: N802 - Qt's naming
            self.setTitle(text)

        def setCollapsed(self, collapsed: bool) -> None:  # noqa: N802
            pass

    class qMRMLWidget(QtWidgets.QWidget):  # noqa: N801
        pass

    class qMRMLNodeComboBox(QtWidgets.QComboBox):  # noqa: N801
        def __getattr__(self, name: str):
            if name.startswith("set"):  # MRML-only properties (nodeTypes, noneEnabled...): nothing to draw
                return lambda *args: None
            raise AttributeError(name)

    for cls in (ctkCollapsibleButton, qMRMLWidget, qMRMLNodeComboBox):
        module = types.ModuleType(cls.__name__)
        setattr(module, cls.__name__, cls)
        sys.modules[cls.__name__] = module


def load_panel():
    from PyQt5 import uic

    tree = ET.parse(MODULE / "Resources" / "UI" / "LymphNodeReview.ui")
    root = tree.getroot()
    for connections in root.findall("connections"):  # MRML scene wiring: nothing to draw
        root.remove(connections)
    return uic.loadUi(io.BytesIO(ET.tostring(root)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--strategy", default="uncertain")
    parser.add_argument("--out", default="docs/slicer_panel.png")
    parser.add_argument("--width", type=int, default=560)
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    server = LymphNodeServer(args.server)
    info = server.info()
    case = server.next_case(args.strategy)
    if not case:
        raise SystemExit(f"the server has no unreviewed case for strategy {args.strategy!r}")
    session = ReviewSession(server.run_pipeline(case["id"]))
    # a review under way: the likeliest node accepted, the least likely rejected, the rest pending
    by_p = sorted(session.nodes, key=lambda n: n.p_metastasis if n.p_metastasis is not None else 0.0)
    if len(by_p) >= 2:
        session.accept(by_p[-1].id)
        session.reject(by_p[0].id)

    from PyQt5 import QtWidgets

    app = QtWidgets.QApplication(sys.argv[:1])
    slicer_look_alikes()
    panel = load_panel()
    panel.serverUrlEdit.setText(args.server)
    panel.strategyCombo.addItems(sorted(info.get("strategies", {})))
    panel.strategyCombo.setCurrentText(args.strategy)
    panel.volumeSelector.addItem(case["id"])
    panel.reviewerEdit.setText("dr.demo")
    panel.nodeTable.setColumnCount(len(TABLE_COLUMNS))
    panel.nodeTable.setHorizontalHeaderLabels(list(TABLE_HEADERS))
    cells = session.table()
    panel.nodeTable.setRowCount(len(cells))
    for r, row in enumerate(cells):
        for c, text in enumerate(row):
            panel.nodeTable.setItem(r, c, QtWidgets.QTableWidgetItem(text))
    panel.nodeTable.resizeColumnsToContents()
    panel.nodeTable.selectRow(0)
    panel.summaryLabel.setText(session.summary_text())
    panel.progressBar.hide()
    panel.statusLabel.setText(f"{describe_server(info)} | case {case['id']}: {len(cells)} nodes")
    panel.resize(args.width, panel.sizeHint().height() + 40)
    panel.show()
    app.processEvents()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(args.out):
        raise SystemExit(f"could not write {args.out}")
    print(f"wrote {args.out} ({case['id']}, {len(cells)} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
