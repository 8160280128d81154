"""``TritonBackend``: the network on a Triton Inference Server, our pre- and post-processing around it.

    seg = Segmenter(TritonBackend("127.0.0.1:8001", "fastinst"))   # a repository from `fastinst-rt export-triton`
    res = seg.predict("street.jpg")

The model's ``config.pbtxt`` carries the export metadata (``parameters { key: "fastinst_rt" }``), read once over
gRPC: classes, test size, fixed input size, output names. ``infer`` then sends the padded uint8 batch and the valid
sizes as Triton tensors and returns the same dict as the ONNX Runtime backend. Needs ``tritonclient[grpc]``.
"""

from __future__ import annotations

import json

import numpy as np

from ..artifact import ArtifactMeta
from ..runtime.backends.base import Backend, BackendInfo

__all__ = ["TritonBackend"]

# Triton data type names of the tensors this backend sends (the config's TYPE_X without "TYPE_").
_WIRE = {np.dtype(np.uint8): "UINT8", np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64"}


class TritonBackend(Backend):
    """A fastinst-rt model served by Triton (gRPC).

    Args:
        url: the server's gRPC address, "host:port" (Triton's default port is 8001).
        model: the model's name in the repository; ``version`` "" takes the server's choice.
        timeout: seconds per request.
    """

    kind = "triton"

    def __init__(self, url: str = "127.0.0.1:8001", model: str = "fastinst", version: str = "", timeout: float = 60.0):
        try:
            import tritonclient.grpc as grpcclient
        except ImportError:
            raise ImportError("the Triton backend needs tritonclient: pip install 'fastinst-rt[serve]'") from None
        self._grpc, self.url, self.model, self.version, self.timeout = grpcclient, url, model, version, timeout
        self.client = grpcclient.InferenceServerClient(url)
        config = self.client.get_model_config(model, version, as_json=True, client_timeout=timeout)["config"]
        try:
            text = config["parameters"]["fastinst_rt"]["string_value"]
        except KeyError:
            raise ValueError(
                f"Triton model {model!r} at {url} has no fastinst_rt parameter: write its repository with "
                "`fastinst-rt export-triton`"
            ) from None
        self.meta = ArtifactMeta.from_dict(json.loads(text), f"Triton model {model!r} at {url}")
        self.config = config
        self.input_types = {t["name"]: np.dtype(t["data_type"].removeprefix("TYPE_").lower()) for t in config["input"]}
        self.output_names = [t["name"] for t in config["output"]]
        max_batch_size = int(config.get("max_batch_size", 0))
        # max_batch_size 0: the model takes exactly its batch (the first dim); else up to max_batch_size images.
        fixed = max_batch_size == 0
        batch = int(config["input"][0]["dims"][0]) if fixed else max_batch_size
        super().__init__(BackendInfo.from_meta(self.meta, batch, fixed_batch=fixed))

    def _run(self, batch: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        """One Triton request: {"images", "sizes"} in, the config's outputs back (the base class checks the input,
        splits batches at ``max_batch_size`` and casts int32 outputs of a TensorRT 8.x plan to int64)."""
        g = self._grpc
        inputs = []
        for name, value in (("images", batch), ("sizes", sizes)):
            value = np.ascontiguousarray(value, dtype=self.input_types[name])
            tensor = g.InferInput(name, list(value.shape), _WIRE[value.dtype])
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        outputs = [g.InferRequestedOutput(name) for name in self.output_names]
        result = self.client.infer(self.model, inputs, self.version, outputs=outputs, client_timeout=self.timeout)
        return {name: result.as_numpy(name) for name in self.output_names}

    def _release(self) -> None:
        self.client.close()

    def describe(self) -> dict:
        d = super().describe()
        d.update(url=self.url, triton_model=self.model, platform=self.config.get("platform"),
                 max_batch_size=int(self.config.get("max_batch_size", 0)), outputs=self.meta.outputs,
                 precision=self.meta.precision)  # fmt: skip
        return d
