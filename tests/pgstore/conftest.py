from tests.storage.pg_server import pg_server

__all__ = ["pg_server"]
