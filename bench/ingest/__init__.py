"""The ingest benchmark: `python -m bench.ingest --help`.

Offers fixes over MQTT QoS 1 at rising rates to one `fleetpulse ingest` process and
compares what it commits with the bare receive rate of an aiomqtt subscriber measured in
the same run.
"""
