"""A simulated fleet and recorded trips, published over MQTT in the device contract.

`fleetpulse simulate` drives vans along a road network (an OpenStreetMap extract, or a
synthetic street grid) and drones on delivery sorties, each device with its own MQTT
connection, with faults injected on purpose; `fleetpulse replay` plays recordings (Porto
taxi CSV, GPX, DJI flight logs) back at a speed factor.

The movement models (`streets`, `vehicles`, `drones`), the fault injector (`faults`), the
message building (`messages`, `fleet`) and the recording readers (`recordings`) are pure;
`publisher`, `runner`, `replay` and `deliveries` do the I/O.
"""
