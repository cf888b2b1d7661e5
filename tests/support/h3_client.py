"""An HTTP/3 WebSocket client (RFC 9220, extended CONNECT) for the end-to-end tests: aioquic,
from PyPI, in the virtualenv that `make envoy` makes. It opens one socket to 127.0.0.1:PORT and
does one scenario, then prints what it saw as one JSON line.

    h3_client.py PORT trailers   an unfinished message (FIN=0), then trailers ending the stream
    h3_client.py PORT auth KEY   an auth message with KEY, then "over h3", read back
"""

import asyncio
import json
import ssl
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamReset


def frame(fin, opcode, payload):
    """A masked client frame (RFC 6455 section 5.2), payload under 126 bytes."""
    mask = bytes([0x37, 0xFA, 0x21, 0x3D])
    head = bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)])
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.status = None
        self.data = b""
        self.reset = False

    def quic_event_received(self, event):
        if isinstance(event, StreamReset):
            self.reset = True
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self.status = self.status or dict(h3_event.headers).get(b":status", b"").decode()
            elif isinstance(h3_event, DataReceived):
                self.data += h3_event.data
                if h3_event.stream_ended:
                    self.reset = True


async def wait_for(condition, seconds):
    for _ in range(int(seconds * 20)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def main(port, scenario, key):
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    configuration.verify_mode = ssl.CERT_NONE
    async with connect("127.0.0.1", port, configuration=configuration, create_protocol=Client) as client:
        stream = client._quic.get_next_available_stream_id()
        headers = [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", b"/ws"),
            (b"sec-websocket-version", b"13"),
            (b"origin", b"https://app.example.com"),
        ]
        client.h3.send_headers(stream, headers, end_stream=False)
        client.transmit()
        await wait_for(lambda: client.status is not None, 5)
        if scenario == "trailers":
            client.h3.send_data(stream, frame(False, 1, b'{"type":"chat","text":"held'), end_stream=False)
            client.transmit()
            await asyncio.sleep(0.3)
            client.h3.send_headers(stream, [(b"x-end", b"1")], end_stream=True)
            client.transmit()
            await wait_for(lambda: client.reset, 3)
        else:
            auth = json.dumps({"type": "auth", "token": key}).encode()
            client.h3.send_data(stream, frame(True, 1, auth) + frame(True, 1, b"over h3"), end_stream=False)
            client.transmit()
            await wait_for(lambda: client.data.endswith(b"over h3"), 5)
        print(json.dumps({"status": client.status, "reset": client.reset, "data": client.data.decode("latin-1")}))


asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""))
