"""Multi-process mode (``workers`` > 1): a primary process and N data-plane workers.

channel.py is the wire between them, worker.py a worker's runtime, primary.py the
primary's side (spawning, restarting, and turning the workers' reports into the one view
every operator reads). docs/workers.md explains the design.
"""
