"""The embedded channel layer relays group messages between the processes of one host."""

from __future__ import annotations

import asyncio
import os
import socket
import stat

import pytest

from gateway.hostlayer import HostChannelLayer


async def _member(layer: HostChannelLayer, group: str) -> str:
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    return channel


def _inbox_paths(directory):
    return sorted(p for p in directory.iterdir() if p.name.endswith(".sock"))


@pytest.mark.asyncio
async def test_a_group_message_reaches_a_member_held_by_another_layer(tmp_path):
    sender, holder = HostChannelLayer(tmp_path), HostChannelLayer(tmp_path)
    channel = await _member(holder, "account-7")
    await sender.group_send("account-7", {"type": "session.changed"})
    assert await asyncio.wait_for(holder.receive(channel), 2) == {"type": "session.changed"}
    await sender.group_send("account-8", {"type": "session.changed"})
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(holder.receive(channel), 0.3)
    await holder.close()


@pytest.mark.asyncio
async def test_a_malformed_datagram_is_dropped_and_the_layer_keeps_working(tmp_path):
    sender, holder = HostChannelLayer(tmp_path), HostChannelLayer(tmp_path)
    channel = await _member(holder, "share-1")
    (inbox,) = _inbox_paths(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
        for garbage in (b"\xc1\xc1", b"\x92\xa3abc\x01", b"\x92\x01\x80", b"\x92\xa1!\x81\xa4type\xa1x"):
            raw.sendto(garbage, str(inbox))
    await sender.group_send("share-1", {"type": "share.revoked", "share": 1})
    assert await asyncio.wait_for(holder.receive(channel), 2) == {"type": "share.revoked", "share": 1}
    await holder.close()


@pytest.mark.asyncio
async def test_the_socket_of_a_process_that_died_is_removed(tmp_path):
    dead = tmp_path / "4242-deadbeef.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    bound.bind(str(dead))
    bound.close()  # the file stays, nobody reads it
    await HostChannelLayer(tmp_path).group_send("account-1", {"type": "session.changed"})
    assert not dead.exists()


@pytest.mark.asyncio
async def test_the_directory_is_private_and_a_message_too_large_is_refused(tmp_path):
    directory = tmp_path / "channels"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    holder = HostChannelLayer(directory)
    await _member(holder, "account-1")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(_inbox_paths(directory)[0].stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="at most"):
        await HostChannelLayer(directory).group_send("account-1", {"type": "x", "blob": "a" * 20000})
    await holder.close()
    assert _inbox_paths(directory) == []


@pytest.mark.asyncio
async def test_a_directory_someone_else_owns_is_never_used(tmp_path):
    planted = tmp_path / "channels"
    planted.mkdir(mode=0o777)
    os.chown(planted, 65534, 65534)  # nobody, who got there first
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(planted / "1-eavesdrop.sock"))
    listener.setblocking(False)
    layer = HostChannelLayer(planted)
    channel = await _member(layer, "account-1")
    await layer.group_send("account-1", {"type": "session.changed"})
    assert await asyncio.wait_for(layer.receive(channel), 2) == {"type": "session.changed"}  # still local
    assert _inbox_paths(planted) == [planted / "1-eavesdrop.sock"]
    with pytest.raises(BlockingIOError):
        listener.recv(100)
    listener.close()
