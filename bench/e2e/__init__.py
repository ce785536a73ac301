"""The end-to-end benchmark: `python -m bench.e2e --help`.

Everything on one machine: a private Mosquitto and Redis, a fresh PostgreSQL database,
FleetPulse's ingest, tracker and web stages as processes, 100,000 devices publishing over
MQTT against 10,000 fences with deliveries under way, and websocket clients on the other
end. The offered rate rises in steps until the system stops keeping up.
"""
