"""The apply stage: the answer in the forms boot loaders and tuning daemons take, and whether it took.

`boot_config` renders a recommendation's kernel command line as bare arguments, a line for
/etc/default/grub, a grubby command or a tuned profile, always with the parameter names of the
campaign's kernel release. `check` compares what the running kernel uses with a recommendation,
under the running release's parameter names.
"""

from ._check import CheckResult, ParamCheck, check
from ._formats import FORMATS, boot_config

__all__ = ["FORMATS", "CheckResult", "ParamCheck", "boot_config", "check"]
