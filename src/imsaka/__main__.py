import sys

from imsaka.cli import main

sys.exit(main())
