"""The station-side benchmarks behind ``kenpin bench <what>``: torch-free, like the rest of ``device/``.

    station     the daemon's throughput against bare ONNX Runtime, latency, triggers, memory
    store       verdicts per second the record keeps up with, each committed durably
    dashboard   what dashboard clients cost the station (load: the real station; cost: per kind of traffic)
    durability  kill -9 of the running daemon: no acknowledged verdict lost
    products    product switches under load: every part judged as its trigger's product, none lost
    profile     where a frame's time goes on the station path
    modbus      a PLC over Modbus TCP: handshake (lost, doubled, latency), malformed frames, polling
    opcua       the OPC UA server: parts through Inspect(), bad requests, a client polling every 10 ms

``kenpin/bench_cli.py`` holds their command-line arguments and imports each module only when it runs.
"""
