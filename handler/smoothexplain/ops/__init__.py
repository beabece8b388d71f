"""Running the server: `smoothexplain serve`, the TorchServe launcher, the metrics exporter
and probes, the worker watchdog, key renewal and disk guards."""
