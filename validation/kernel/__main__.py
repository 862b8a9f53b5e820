"""`python -m rcutune.validation.kernel build | boot ... | sweep FILE --out CSV`."""

import sys

from .harness import main

sys.exit(main())
