"""Failures keep their class from the socket to the client, the metrics and the attempt log."""

import asyncio
import socket
import threading

import aiohttp
import httpx
import pytest
import yarl
from aiohttp.client_reqrep import ConnectionKey
from httpx_aiohttp.transport import map_aiohttp_exceptions

from service import transport
from service.receiver import Receiver
from tests.harness import ServerThread, eventually, free_port, refused_port

UNRESOLVABLE = "status-proxy-test.invalid"  # RFC 2606: never resolves


class Silent:
    """A TCP server that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent():
    server = Silent()
    yield server
    server.close()


async def _get(url: str, timeout: float = 2.0) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport.Transport()) as client:
        return await client.get(url, timeout=timeout)


def test_refused_connection_is_a_connect_error():
    with pytest.raises(httpx.ConnectError) as caught:
        asyncio.run(_get(f"http://127.0.0.1:{refused_port()}/"))
    assert not isinstance(caught.value, httpx.TimeoutException)
    assert "cannot connect to 127.0.0.1" in str(caught.value)


def test_unresolvable_name_is_a_connect_error_that_says_so():
    with pytest.raises(httpx.ConnectError) as caught:
        asyncio.run(_get(f"http://{UNRESOLVABLE}/"))
    assert f"{UNRESOLVABLE} does not resolve" in str(caught.value)


def test_silence_is_a_read_timeout(silent):
    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(_get(silent.url, timeout=0.3))


def test_a_hang_up_is_a_protocol_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)

    def hang_up() -> None:  # every time: aiohttp retries a GET once on a fresh connection
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.recv(1024)
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    with pytest.raises(httpx.RemoteProtocolError):
        asyncio.run(_get(f"http://127.0.0.1:{sock.getsockname()[1]}/"))
    sock.close()


def _outcomes(service) -> dict[str, float]:
    found = {}
    for line in service.client.get("/metrics").text.splitlines():
        if line.startswith("status_proxy_upstream_requests_total{"):
            label = line.split('outcome="')[1].split('"')[0]
            found[label] = float(line.split()[-1])
    return found


@pytest.mark.parametrize("where", ["refused", "unresolvable"])
def test_unreachable_upstream_is_502_unreachable(make_service, where):
    port = free_port()
    url = f"http://127.0.0.1:{port}" if where == "refused" else f"http://{UNRESOLVABLE}:{port}"
    service = make_service(upstream_base_url=url)
    response = service.client.get("/v1/videos/video_x")
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_unreachable"
    assert "unreachable" in error["message"] and "in time" not in error["message"]
    assert _outcomes(service).get("unreachable") == 1 and "timeout" not in _outcomes(service)
    created = service.client.post("/v1/videos", json={"model": "m", "prompt": "p"})
    assert created.status_code == 502 and created.json()["error"]["code"] == "upstream_unreachable"


def test_silent_upstream_is_504_timeout(make_service, silent):
    service = make_service(upstream_base_url=silent.url, upstream_timeout=0.3)
    response = service.client.get("/v1/videos/video_x")
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert _outcomes(service).get("timeout") == 1
    created = service.client.post("/v1/videos", json={"model": "m", "prompt": "p"})
    assert created.status_code == 504


def test_upstream_refusing_our_key_is_not_the_clients_401(make_service):
    keyed = make_service(upstream_api_key="sk-not-the-simulators", api_keys="client-key")
    # A fetch-through needs an open API: with keys, an untracked task is 404 unasked.
    open_api = make_service(upstream_api_key="sk-not-the-simulators")
    for response in (
        open_api.client.get("/v1/videos/video_x"),
        keyed.client.post("/v1/videos", json={"model": "m", "prompt": "p"}),
    ):
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["code"] == "upstream_key_refused"
        assert "status-proxy's upstream key" in error["message"]
        assert "sk-not-the-simulators" not in response.text
    # The client's own key refused is still the client's 401.
    assert (
        keyed.client.get("/v1/videos/video_x", headers={"Authorization": "Bearer no"}).status_code
        == 401
    )


def test_webhook_attempt_to_unresolvable_host_names_the_real_error(make_service, upstream):
    service = make_service()
    task = upstream.add(duration=0.1, queued=0)
    registration = service.register(task, f"http://{UNRESOLVABLE}/hook").json()

    def attempt():
        tries = service.attempts(registration["id"])
        return tries[0] if tries else None

    error = eventually(attempt)["error"]
    assert error.count("does not resolve") == 1 and "Timeout" not in error, error
    assert error.startswith("ConnectError: "), error


def test_webhook_attempt_to_a_closed_port_is_refused_not_timed_out(make_service, upstream):
    service = make_service()
    task = upstream.add(duration=0.1, queued=0)
    registration = service.register(task, f"http://127.0.0.1:{refused_port()}/hook").json()
    tries = eventually(lambda: service.attempts(registration["id"]))
    assert tries[0]["error"].startswith("ConnectError: cannot connect"), tries[0]
    assert tries[0]["status_code"] is None


def test_an_answer_is_still_an_answer():
    thread = ServerThread(Receiver().create_app()).start()
    try:
        response = asyncio.run(_get(f"{thread.url}/x"))
        assert response.status_code < 500
    finally:
        thread.stop()


def test_a_delete_refused_for_our_upstream_key_says_whose_key(make_service):
    service = make_service(upstream_api_key="sk-not-the-simulators")
    answer = service.client.delete("/v1/videos/video_x")
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["code"] == "upstream_key_refused"
    assert "sk-not-the-simulators" not in answer.text


def _as_transport_names(exc: Exception) -> Exception:
    """What Transport raises for ``exc``: httpx-aiohttp's map, then our remapping."""
    try:
        with map_aiohttp_exceptions():
            raise exc
    except httpx.TransportError as mapped:
        return transport._remap(mapped)
    except Exception as unmapped:
        return transport._remap(unmapped)
    raise AssertionError


KEY = ConnectionKey("up.example", 443, True, True, None, None, None)


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "Connection refused")),
        aiohttp.ClientConnectorDNSError(KEY, OSError(-2, "Name or service not known")),
        aiohttp.ConnectionTimeoutError("Connection timeout to host https://up.example/"),
        aiohttp.SocketTimeoutError("Timeout on reading data from socket"),
        aiohttp.ServerTimeoutError("timeout"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("Response payload is not completed"),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        aiohttp.ClientConnectionResetError("Cannot write to closing transport"),
        aiohttp.NonHttpUrlClientError(yarl.URL("ftp://up.example/")),
        aiohttp.InvalidUrlClientError("http://"),
        TimeoutError(),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
def test_the_lean_path_names_failures_as_the_transport_does(exc):
    found, wanted = transport.failure(exc), _as_transport_names(exc)
    assert (type(found), str(found)) == (type(wanted), str(wanted))
