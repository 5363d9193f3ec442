import socket

from services.common.ports import free_port, free_ports


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(32)
    assert len(set(ports)) == 32
    for port in ports[:3] + [free_port()]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
