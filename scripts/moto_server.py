"""moto's server (same arguments as `moto_server`), with DynamoDB requests handled one at a time.

DynamoDB applies every single-item write atomically: a conditional PutItem, an UpdateItem that
ADDs to a counter. moto's threaded server does not (no lock between reading an item and writing
it), so tests that fire concurrent writes at one item -- the exactly-once key taken by five
concurrent deliveries, the daily API counter -- could race inside moto and fail (seen: two of ten
concurrent ADDs returned the same total). Handling DynamoDB requests one at a time restores the
guarantee the code relies on; SQS requests (long polls among them) stay concurrent.

Secrets Manager requests are serialised too: the refresh token's version-checked write relies
on UpdateSecretVersionStage refusing to move AWSCURRENT off a version that no longer holds it,
which AWS applies atomically and moto checks and changes without a lock.
"""

import sys
import threading

from moto import server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication

_DYNAMODB = threading.Lock()
_dispatch = DomainDispatcherApplication.__call__


def _call(self, environ, start_response):
    if environ.get("HTTP_X_AMZ_TARGET", "").startswith(("DynamoDB_", "secretsmanager.")):
        with _DYNAMODB:
            # The whole response is produced inside the lock.
            return list(_dispatch(self, environ, start_response))
    return _dispatch(self, environ, start_response)


DomainDispatcherApplication.__call__ = _call

if __name__ == "__main__":
    server.main(sys.argv[1:])
