"""The names of the files in a run's results directory (no imports: the writers, the readers and
the trackers share them without importing each other)."""

ROUNDS_FILE = "rounds.csv"
CLIENTS_FILE = "clients.csv"
CONFIG_FILE = "config.toml"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.safetensors"
PLOT_FILE = "accuracy.png"
#: The lock file of a directory a fedmm process is writing (:mod:`fedmm.runlock`; removed again
#: when the lock is released).
LOCK_FILE = ".fedmm.lock"
#: Who trained in each round and which modalities (runs whose selection is not ``all``).
SELECTION_PLOT_FILE = "selection.png"
