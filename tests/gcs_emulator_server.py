"""Runs `gcp-storage-emulator` in memory, adding the `x-goog-generation` header its downloads leave out.

Tensorstore (orbax's array writer) reads an object's generation from that header, as the real GCS sends
it, and fails with "Malformed StorageGeneration" without it; gcsfs does not need it.

    python tests/gcs_emulator_server.py --port PORT --bucket NAME
"""

from __future__ import annotations

import argparse
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--port", type=int, required=True)
  p.add_argument("--bucket", required=True)
  args = p.parse_args()
  objects.download = _download_with_generation  # objects.get (alt=media) calls it by module name
  replaced = 0
  for _, methods in server.HANDLERS:
    for method, handler in list(methods.items()):
      if handler is _download:
        methods[method] = _download_with_generation
        replaced += 1
  if not replaced:
    raise SystemExit("gcp-storage-emulator's routing table changed: no download route found to add the header to")
  server.create_server("127.0.0.1", args.port, in_memory=True, default_bucket=args.bucket).run()


if __name__ == "__main__":
  main()
