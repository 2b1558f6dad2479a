"""A blocking Python client for PredictService.

::

    from services.client import EquiserveClient

    with EquiserveClient("127.0.0.1:50051", api_key="...") as client:
        results = client.predict([atoms1, atoms2], properties=("energy", "forces"))
        print(results[0].energy, results[0].forces.shape)   # eV, (n_atoms, 3) eV/Å

Failed RPCs raise ``grpc.RpcError`` carrying the status code (INVALID_ARGUMENT,
NOT_FOUND, ...); a structure the model could not evaluate comes back in its place as
a :class:`StructureFailedError` while the others succeed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from equiserve.v1 import predict_pb2, predict_pb2_grpc, structure_pb2

logger = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
API_KEY_METADATA = "x-api-key"
_PROPERTIES = {
    "energy": structure_pb2.PROPERTY_ENERGY,
    "forces": structure_pb2.PROPERTY_FORCES,
    "stress": structure_pb2.PROPERTY_STRESS,
}


@dataclass(frozen=True)
class Result:
    """One structure's prediction.

    Attributes:
        energy: total energy, eV.
        forces: ``(n_atoms, 3)`` forces, eV/Å, or ``None`` when not asked.
        stress: ``(6,)`` stress, eV/Å^3, ASE Voigt order, or ``None`` when not asked
            or not periodic.
        id: the structure's id as sent.
    """

    energy: float
    forces: np.ndarray | None
    stress: np.ndarray | None
    id: str = ""


class StructureFailedError(ValueError):
    """The service could not evaluate one structure (its request went on).

    Attributes:
        reason: stable code (``compute_failed``, ...).
        index: position of the structure in its request.
    """

    def __init__(self, reason: str, message: str, index: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.index = index


def structure_message(item: Any, label: str | None = None) -> structure_pb2.Structure:
    """A ``Structure`` message from an ASE ``Atoms`` or a structure record.

    Args:
        item: ``ase.Atoms`` or anything with ``numbers``, ``positions`` (Å),
            ``cell`` (Å) and ``pbc`` (e.g. ``models.structure.Structure``).
        label: id echoed back in the result.
    """
    numbers = np.asarray(item.numbers, dtype=np.int64)
    cell = getattr(item.cell, "array", item.cell)
    return structure_pb2.Structure(
        atomic_numbers=numbers.tolist(),
        positions=np.asarray(item.positions, dtype=np.float64).ravel().tolist(),
        cell=np.asarray(cell, dtype=np.float64).ravel().tolist(),
        pbc=np.asarray(item.pbc, dtype=bool).tolist(),
        id=label if label is not None else (getattr(item, "label", None) or ""),
    )


def result_from_message(msg: structure_pb2.StructureResult) -> Result:
    """A :class:`Result` from its message.

    Raises:
        StructureFailedError: when the message carries a per-structure error.
    """
    if msg.HasField("error"):
        raise StructureFailedError(msg.error.reason, msg.error.message, msg.index)
    forces = (
        np.array(msg.forces, dtype=np.float64).reshape(-1, 3) if msg.forces else None
    )
    stress = np.array(msg.stress, dtype=np.float64) if msg.stress else None
    return Result(energy=msg.energy, forces=forces, stress=stress, id=msg.id)


class EquiserveClient:
    """Blocking client of one gateway.

    Args:
        address: ``host:port`` of the gateway.
        api_key: the caller's API key (sent as ``x-api-key``).
        timeout: default deadline per call, s.
        max_message_bytes: gRPC message limit, matching the server's.
        channel: an existing channel to use instead of a new insecure one.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._channel = channel or grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self._stub = predict_pb2_grpc.PredictServiceStub(self._channel)
        self._metadata = ((API_KEY_METADATA, api_key),) if api_key else ()
        self.timeout = timeout

    def __enter__(self) -> EquiserveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def request(
        self,
        structures: Sequence[Any],
        model: str = "sevennet-0",
        backend: str = "",
        properties: Iterable[str] = ("energy", "forces"),
    ) -> predict_pb2.PredictRequest:
        """The ``PredictRequest`` for ``structures``.

        Raises:
            ValueError: for a property other than energy, forces, stress.
        """
        unknown = set(properties) - set(_PROPERTIES)
        if unknown:
            raise ValueError(
                f"unknown properties {sorted(unknown)}; "
                f"choose from {sorted(_PROPERTIES)}"
            )
        return predict_pb2.PredictRequest(
            model=model,
            backend=backend,
            structures=[structure_message(s) for s in structures],
            properties=[_PROPERTIES[p] for p in properties],
        )

    def predict(
        self,
        structures: Sequence[Any],
        model: str = "sevennet-0",
        backend: str = "",
        properties: Iterable[str] = ("energy", "forces"),
        timeout: float | None = None,
    ) -> list[Result | StructureFailedError]:
        """Evaluate structures in one call; results in order.

        Raises:
            grpc.RpcError: the call failed as a whole (see its ``code()``).
        """
        request = self.request(structures, model, backend, properties)
        response = self._stub.Predict(
            request, timeout=timeout or self.timeout, metadata=self._metadata
        )
        return [_result_or_error(msg) for msg in response.results]

    def predict_stream(
        self,
        structures: Sequence[Any],
        model: str = "sevennet-0",
        backend: str = "",
        properties: Iterable[str] = ("energy", "forces"),
        timeout: float | None = None,
    ) -> Iterator[tuple[int, Result | StructureFailedError]]:
        """Yield ``(index, result)`` as results finish (out of order)."""
        request = self.request(structures, model, backend, properties)
        stream = self._stub.PredictStream(
            request, timeout=timeout or self.timeout, metadata=self._metadata
        )
        for msg in stream:
            yield int(msg.index), _result_or_error(msg)

    def list_models(
        self, timeout: float | None = None
    ) -> predict_pb2.ListModelsResponse:
        """The served models, their backends and exactness."""
        return self._stub.ListModels(
            predict_pb2.ListModelsRequest(),
            timeout=timeout or self.timeout,
            metadata=self._metadata,
        )


def _result_or_error(
    msg: structure_pb2.StructureResult,
) -> Result | StructureFailedError:
    try:
        return result_from_message(msg)
    except StructureFailedError as err:
        return err
