# SPDX-License-Identifier: AGPL-3.0-or-later
"""Python code generated from ``proto/lila/v1/*.proto`` (``python -m lila_net.proto.generate``).

``coordinator_pb2`` holds the messages of the coordinator API, ``coordinator_pb2_grpc`` the client
stub ``CoordinatorStub``. The files are committed; ``tests/unit/net/test_proto.py`` checks they match the protos.
"""
