"""memristor-admm pipeline: config, the Ray DAG, Tune, tables and the command line (the only layer that imports ray and pyarrow)."""
