"""The websocket benchmark: `python -m bench.ws --help`.

Dispatch clients receiving the whole stream and customer clients each following one
delivery, against FleetPulse's ingest, tracker and web stages fed over MQTT: deliveries/s
and the latency from MQTT publish to websocket receipt.
"""
