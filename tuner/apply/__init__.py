"""The apply stage: the answer in the forms boot loaders and tuning daemons take.

`boot_config` renders a recommendation's kernel command line as bare arguments, a line for
/etc/default/grub, a grubby command or a tuned profile, always with the parameter names of the
campaign's kernel release.
"""

from ._formats import FORMATS, boot_config

__all__ = ["FORMATS", "boot_config"]
