"""Opening a consumer through ``WebsocketCommunicator`` the way daphne would show it to a browser.

A refusal must be an accepted socket closed with its code: a consumer that
closes before accepting becomes an HTTP 403 handshake at daphne, and the
browser sees only 1006. ``socket_open`` therefore fails the test for a close
before accept, and answers (open, close code).
"""

from __future__ import annotations

from channels.testing import WebsocketCommunicator


async def socket_open(communicator: WebsocketCommunicator, *, timeout: float = 5,
                      quiet: bool = False) -> tuple[bool, int | None]:
    """Connect; (True, None) when the socket stays open, (False, code) when refused.

    ``quiet``: the consumer sends nothing on success (wait briefly for a close).
    """
    accepted, code = await communicator.connect(timeout=timeout)
    if not accepted:
        raise AssertionError(f"closed before accept (code {code}): a browser would see 1006")
    try:
        first = await communicator.receive_output(timeout=0.5 if quiet else timeout)
    except TimeoutError:
        if quiet:
            return True, None
        raise
    if first["type"] == "websocket.close":
        return False, first.get("code")
    queue = communicator.output_queue
    rest = []
    while not queue.empty():
        rest.append(queue.get_nowait())
    for message in (first, *rest):
        queue.put_nowait(message)
    return True, None
