"""The Python client under the project's own name:

    from finetune.client import Client
    with Client("127.0.0.1:50051", "127.0.0.1:50052", api_key) as ft:
        print(ft.complete("shop.public.router", "I was charged twice").text)

The one hand-written module in this package, whose other modules are generated from the protos:
`finetune` is the proto package's import path, so the public name has to live here. protogen
replaces `*_pb2*` files only and `make check-protos` compares them with git, so it is neither
deleted nor reported as drift. The implementation is in `services.cli.client`; that import path
keeps working for one more release.
"""

from services.cli.client import FinetuneClient

Client = FinetuneClient

__all__ = ["Client", "FinetuneClient"]
