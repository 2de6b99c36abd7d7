"""Every call metallm makes into Vowpal Wabbit, in one place.

pyvw's public ``Workspace.learn``/``predict`` wrap every parsed line in a Python ``Example``
object. Calling the binding (pylibvw) on the parsed examples directly does the same work in
C++ and is about 2.5× (learn) and 3× (predict) faster (measured with 384-dim embeddings and
4 arms: 21 vs 54 µs per learn, 17 vs 52 µs per predict). Those entry points are private
(``Workspace._parse``, ``pylibvw.vw.learn_multi`` / ``predict_multi`` /
``_finish_example_multi_ex``), so a VW release may drop them: when any is missing this
module falls back to the public API, which gives the same predictions (tests/test_vw.py).

Only multi-line (``--cb_adf`` / ``--cb_explore_adf``) workspaces are used here.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import TYPE_CHECKING

import pylibvw

if TYPE_CHECKING:
    from vowpalwabbit import Workspace

log = logging.getLogger(__name__)

_PRIVATE_CALLS = ("_parse", "learn_multi", "predict_multi", "_finish_example_multi_ex")
# Whether this VW build has the private entry points (pinned to 9.x in pyproject.toml).
FAST_CALLS_AVAILABLE = all(hasattr(pylibvw.vw, name) for name in _PRIVATE_CALLS)


class VWModel:
    """A Vowpal Wabbit workspace with fast multi-line learn/predict and save to bytes.

    ``args``: the VW command line; ``model``: bytes of a saved model to start from (what
    ``to_bytes`` returned), or None for fresh weights; ``fast``: use the private binding
    calls (None: when this VW build has them; False: the public API, e.g. to compare).
    """

    def __init__(self, args: str, model: bytes | None = None, *, fast: bool | None = None) -> None:
        # vowpalwabbit's package import costs ~50 ms (importlib.metadata); pay it on first use.
        from vowpalwabbit import Workspace

        if fast and not FAST_CALLS_AVAILABLE:
            log.warning("this Vowpal Wabbit build lacks %s; using its public API", _PRIVATE_CALLS)
        self.fast = FAST_CALLS_AVAILABLE if fast is None else fast and FAST_CALLS_AVAILABLE
        self.args = args
        if model is None:
            self._ws: Workspace = Workspace(args, enable_logging=False)
            return
        # VW 9 reads an initial model from a file only (-i PATH).
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.vw")
            with open(path, "wb") as f:
                f.write(model)
            self._ws = Workspace(f"{args} -i {path}", enable_logging=False)

    def learn(self, lines: list[str]) -> None:
        """One update from one multi-line example (a shared line and one line per action)."""
        if not self.fast:
            self._ws.learn(lines)
            return
        examples = self._ws._parse("\n".join(lines))
        try:
            pylibvw.vw.learn_multi(self._ws, examples)
        finally:
            pylibvw.vw._finish_example_multi_ex(self._ws, examples)

    def predict(self, lines: list[str]) -> list[float]:
        """One score per action, in action order: costs (``--cb_adf``) or the pmf
        (``--cb_explore_adf``)."""
        if not self.fast:
            return list(self._ws.predict(lines))
        examples = self._ws._parse("\n".join(lines))
        try:
            pylibvw.vw.predict_multi(self._ws, examples)
            scores: list[float] = examples[0].get_action_scores()
        finally:
            pylibvw.vw._finish_example_multi_ex(self._ws, examples)
        return scores

    def to_bytes(self) -> bytes:
        """The model (weights and the options it was trained with) as VW saves it."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.vw")
            self._ws.save(path)
            with open(path, "rb") as f:
                return f.read()
