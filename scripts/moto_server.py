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

Two more patches keep moto's memory and time flat under load (`cosell soak` runs this script
too, see cli/src/stack.rs):

- moto keeps every model object it ever creates: `BaseModel.__new__` appends each instance to
  its class's `instances_tracked` list, only read by the `/moto-api/data.json` dashboard. Every
  DynamoDB item moto copies (a copy of the whole table for each action of a TransactWriteItems,
  a copy of each Query result) is one, so nothing is ever freed: with ~600 items in the table a
  soak had 540,000 `Item`s and 7 million `DynamoType`s alive and moto grew by ~10 MB/s. Models
  are no longer tracked here (the dashboard then lists nothing; nothing else reads the lists).
- moto's TransactWriteItems deep-copies the whole table once per action of the transaction, to
  roll back if one fails: O(table size) per write, so a soak slows down as the table grows. Here
  only the partitions the transaction touches are copied and restored.
- moto's Query sorts the whole table before picking the queried items (175 ms a query with
  8,000 items): here it starts from the queried partition, or from the unsorted items for a
  query on an index.
"""

import copy
import inspect
import sys
import threading

from moto import server
from moto.core.common_models import BaseModel
from moto.dynamodb.models import DynamoDBBackend, DynamoType
from moto.dynamodb.models.table import Table
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


def _untracked_new(cls, *args, **kwargs):
    # As moto's BaseModel.__new__, without `cls.instances_tracked.append(instance)`.
    return super(BaseModel, cls).__new__(cls)


BaseModel.__new__ = staticmethod(_untracked_new)

_transact_write_items = DynamoDBBackend.transact_write_items


def _touched_partitions(backend, transact_items):
    """(table, partition key) of each action; malformed actions are left to moto to refuse."""
    touched = {}
    for action in transact_items:
        for op in action.values():
            try:
                table = backend.tables[op["TableName"]]
                attrs = op["Item"] if "Item" in op else op["Key"]
                hash_key = DynamoType(attrs[table.hash_key_attr])
                touched[(op["TableName"], hash_key)] = (table, hash_key)
            except (KeyError, TypeError, AttributeError):
                continue
    return touched.values()


def _transact_write_items_copying_partitions(self, transact_items):
    # Items are kept as table.items[hash key] -> {range key: Item} (or -> Item without a range
    # key); indexes are computed from the items on each query. So a copy of the partitions the
    # actions write to is all a rollback needs. DynamoDB requests are handled one at a time
    # (the lock above), so nothing else reads or writes the table meanwhile.
    saved = []
    for table, hash_key in _touched_partitions(self, transact_items):
        present = hash_key in table.items
        partition = copy.deepcopy(table.items[hash_key]) if present else None
        saved.append((table, hash_key, present, partition))
    # moto's own rollback copies (and puts back) whole tables: make that copy the table itself.
    Table.__deepcopy__ = lambda table, memo: table
    try:
        return _transact_write_items(self, transact_items)
    except BaseException:
        for table, hash_key, present, partition in saved:
            if present:
                table.items[hash_key] = partition
            else:
                table.items.pop(hash_key, None)
        raise
    finally:
        del Table.__deepcopy__


DynamoDBBackend.transact_write_items = _transact_write_items_copying_partitions

_query = Table.query
_query_signature = inspect.signature(_query)


def _query_without_sorting_the_table(self, *args, **kwargs):
    # moto's Table.query starts from all_items(): every item of the table, sorted by its key
    # (O(n log n) comparisons of DynamoType in Python), then keeps the matching ones and sorts
    # those again. Here all_items() gives, for the duration of the query, only the queried
    # partition (a query on the table: moto keeps only the items with that hash key anyway), or
    # every item unsorted (a query on an index: the matches are then sorted by the index key and
    # the table key, a total order, so the first sort changes nothing). Under the lock above.
    bound = _query_signature.bind(self, *args, **kwargs)
    hash_key = bound.arguments.get("hash_key")
    if bound.arguments.get("index_name") is None and hash_key is not None:
        partition = self.items.get(hash_key)
        if partition is None:
            candidates = []
        elif isinstance(partition, dict):
            candidates = list(partition.values())
        else:
            candidates = [partition]
    else:
        candidates = [
            item
            for partition in self.items.values()
            for item in (partition.values() if isinstance(partition, dict) else [partition])
        ]
    self.all_items = lambda: candidates
    try:
        return _query(self, *args, **kwargs)
    finally:
        del self.all_items


Table.query = _query_without_sorting_the_table

if __name__ == "__main__":
    server.main(sys.argv[1:])
