"""A recommendation's command line in the form each tool takes."""

from __future__ import annotations

import json
from collections.abc import Callable

from ..recommend import Recommendation

FORMATS = ("cmdline", "grub", "grubby", "tuned", "json")


def boot_config(rec: Recommendation, fmt: str) -> str:
    """The text of `fmt` for the overall recommendation (which must exist; "json" needs none)."""
    if fmt == "json":
        return json.dumps(rec.to_json())
    args = rec.kernel_cmdline
    if args is None:
        raise ValueError("no recommendation to apply")
    return _RENDER[fmt](rec, args)


def _grub(rec: Recommendation, args: str) -> str:
    return (
        f"# /etc/default/grub: append, then run update-grub (Debian, Ubuntu) or "
        f"grub2-mkconfig -o /boot/grub2/grub.cfg (Fedora, RHEL); reboot\n"
        f'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT {args}"'
    )


def _grubby(rec: Recommendation, args: str) -> str:
    return f'grubby --update-kernel=ALL --args="{args}"'


def _tuned(rec: Recommendation, args: str) -> str:
    return (
        f"# /etc/tuned/rcutune/tuned.conf, then: tuned-adm profile rcutune (it adds to the current one "
        f"with tuned-adm profile <current> rcutune); reboot\n"
        f"[main]\nsummary=rcutune: kvfree_rcu() page cache for {rec.hardware} (campaign {rec.campaign}, "
        f"Linux {rec.kernel})\n\n[bootloader]\ncmdline_rcutune={args}"
    )


_RENDER: dict[str, Callable[[Recommendation, str], str]] = {
    "cmdline": lambda rec, args: args,
    "grub": _grub,
    "grubby": _grubby,
    "tuned": _tuned,
}
