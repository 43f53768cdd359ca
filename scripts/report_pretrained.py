"""Measure a pretrained model.

The same program as the ``crystal-rl-report-pretrained`` command (code: ``crystal_rl/report_pretrained.py``).
"""

from crystal_rl.report_pretrained import main

if __name__ == "__main__":
    main()
