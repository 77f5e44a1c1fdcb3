"""lsmae demo: the whole chain offline on the embedded checkpoint, and its generated data sets.

``from bridges.demo import demo; demo(workdir="lsmae-demo")`` is ``lsmae demo`` in Python; importing the
package costs no torch import."""
from pretrain.lazy_exports import lazy_getattr

_EXPORTS = {"chain": ("demo",), "config": ("DemoConfig", "DemoResult")}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
