"""GPU inventory behind one interface: NVML (pynvml) on a real host, Fake from configuration.

Owns: the only import of pynvml. Must not: import anything from mgpu, or decide who gets a GPU.

An inventory lists GPUs as dicts {index, uuid, name, memory_mb, external_mb} and measures
`external_mb`: memory on each GPU used by processes that are not mgpu jobs, which a job with
`--mem` must leave room for.
"""

import os

MB = 1024 * 1024


class FakeInventory:
    """GPUs declared in configuration (`fake_gpus`), for hosts without a GPU and for tests."""

    kind = "fake"

    def __init__(self, gpus):
        self._gpus = [dict(gpu) for gpu in gpus]

    def describe(self):
        if not self._gpus:
            return "0 fake GPUs: only --gpus 0 jobs will run"
        return "%d fake GPU%s (%s)" % (len(self._gpus), "" if len(self._gpus) == 1 else "s",
                                       ", ".join("%d MB" % g["memory_mb"] for g in self._gpus))

    def gpus(self):
        return [dict(gpu) for gpu in self._gpus]

    def external_usage(self, job_sessions):
        return {gpu["index"]: gpu.get("external_mb", 0) for gpu in self._gpus}

    def close(self):
        pass


class NvmlInventory:
    kind = "nvml"

    def __init__(self, pynvml):
        self._nvml = pynvml
        count = pynvml.nvmlDeviceGetCount()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self._gpus = []
        for index, handle in enumerate(self._handles):
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            self._gpus.append({
                "index": index,
                "uuid": uuid.decode() if isinstance(uuid, bytes) else uuid,
                "name": name.decode() if isinstance(name, bytes) else name,
                "memory_mb": memory.total // MB,
                "external_mb": 0,
            })
        self._gpus_by_index = {g["index"]: g for g in self._gpus}
        self.driver = _text(pynvml.nvmlSystemGetDriverVersion())

    def describe(self):
        names = sorted({g["name"] for g in self._gpus})
        return "%d NVIDIA GPU%s via NVML (driver %s): %s" % (
            len(self._gpus), "" if len(self._gpus) == 1 else "s", self.driver, ", ".join(names) or "none")

    def gpus(self):
        return [dict(gpu) for gpu in self._gpus]

    def external_usage(self, job_sessions):
        """MB used on each GPU by processes outside the sessions of mgpu jobs."""
        usage = {}
        for index, handle in enumerate(self._handles):
            processes = []
            for query in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                try:
                    processes.extend(getattr(self._nvml, query)(handle))
                except self._nvml.NVMLError:
                    pass
            external = 0
            seen = set()
            for process in processes:
                if process.pid in seen:
                    continue
                seen.add(process.pid)
                try:
                    session = os.getsid(process.pid)
                except OSError:
                    session = None
                if session in job_sessions:
                    continue
                used = process.usedGpuMemory
                if used:  # None when the driver cannot tell (e.g. no permission)
                    external += used // MB
            usage[index] = min(external, self._gpus_by_index[index]["memory_mb"])
        return usage

    def close(self):
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def open_inventory(fake_gpus=None):
    """(inventory, one line saying what was found). Without fake GPUs, NVML; with no NVML (no
    driver, no library), an empty inventory and a line saying so."""
    if fake_gpus is not None:
        inventory = FakeInventory(fake_gpus)
        return inventory, inventory.describe()
    try:
        import pynvml
    except ImportError:
        return FakeInventory([]), "NVML is not available (pynvml missing): no GPUs; only --gpus 0 jobs will run"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return FakeInventory([]), ("NVML found no NVIDIA driver (%s): no GPUs; only --gpus 0 jobs will "
                                   "run (use --fake-gpus N to try mgpu without GPUs)" % e)
    try:
        inventory = NvmlInventory(pynvml)
    except pynvml.NVMLError as e:
        return FakeInventory([]), "NVML failed to list GPUs (%s): no GPUs; only --gpus 0 jobs will run" % e
    return inventory, inventory.describe()
