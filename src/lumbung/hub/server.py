"""``lumbung hub serve``: open the store and blob store, bind a socket, run uvicorn.

Everything that can refuse to start does so before the socket is bound: a bad witness list
(``ConfigError``), a ledger another key signed, or one that fails its integrity check
(``Corrupted``, naming the first bad leaf or node). ``lumbung hub serve`` prints the message and
exits 1.
"""

from __future__ import annotations

import logging
import socket

import uvicorn
from sqlalchemy.engine import make_url

from lumbung.config import HubConfig
from lumbung.crypto.keys import Identity
from lumbung.hub.app import create_app
from lumbung.hub.context import HubContext
from lumbung.hub.cosign import accepted_witnesses
from lumbung.hub.ledger import LogService
from lumbung.store.blobs import DirectoryBlobStore
from lumbung.store.sql import SqlStore


def sqlite_url(config: HubConfig) -> str:
    return f"sqlite:///{(config.data_dir / 'hub.sqlite3').resolve()}"


def serve(config: HubConfig) -> None:
    """Run the hub until interrupted. Writes the bound port to ``data_dir/port`` once listening."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    accepted_witnesses(config.witnesses)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    identity = Identity.load_or_create(config.data_dir)
    db_url = config.db_url or sqlite_url(config)
    store = SqlStore.open(db_url)
    try:
        log = LogService(store.ledger(), identity)
    except BaseException:
        store.close()
        raise
    blobs = DirectoryBlobStore(config.data_dir / "blobs")
    ctx = HubContext(config=config, store=store, blobs=blobs, identity=identity, log=log)
    app = create_app(ctx)
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every response's body waits ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    sock.listen(2048)  # listening before the port is published: early clients queue, not fail
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    port_file = config.data_dir / "port"
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)
    logging.getLogger("lumbung.hub").info(
        "hub %s listening on http://%s:%d (store: %s)",
        identity.actor_id,
        config.host,
        port,
        make_url(db_url).render_as_string(hide_password=True),
    )
    try:
        server.run(sockets=[sock])
    finally:
        store.close()
        port_file.unlink(missing_ok=True)
