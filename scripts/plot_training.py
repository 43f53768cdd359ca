"""Plot training curves from a run's CSV logs.

The same program as the ``crystal-rl-plot-training`` command (code: ``crystal_rl/plot_training.py``).
"""

from crystal_rl.plot_training import main

if __name__ == "__main__":
    main()
