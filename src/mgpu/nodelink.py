"""The one interface through which the master reaches a node.

Owns: what the master may ask of a node (describe itself, start, signal and release a job,
re-adopt jobs after a restart, open a job's output). The master's own host is a LocalNodeLink
to an in-process NodeAgent; a remote host gets the same interface over TLS (RemoteNodeLink), so
the controller and the master treat both alike. Must not: decide anything.
"""

from . import protocol


class NodeLink:
    name = None

    def info(self):
        raise NotImplementedError

    def start_job(self, job, env):
        raise NotImplementedError

    def signal_job(self, job_id, attempt, signum):
        raise NotImplementedError

    def release(self, job_id, attempt):
        raise NotImplementedError

    def adopt(self, jobs):
        raise NotImplementedError

    def open_output(self, path, uid):
        raise NotImplementedError


class LocalNodeLink(NodeLink):
    """The master's own host, in process."""

    def __init__(self, agent):
        self.agent = agent
        self.name = agent.name

    def info(self):
        return self.agent.info()

    def start_job(self, job, env):
        self.agent.start_job(job, env)

    def signal_job(self, job_id, attempt, signum):
        self.agent.signal_job(job_id, attempt, signum)

    def release(self, job_id, attempt):
        self.agent.release(job_id, attempt)

    def adopt(self, jobs):
        self.agent.adopt(jobs)

    def open_output(self, path, uid):
        return self.agent.open_output(path, uid)


class RemoteNodeLink(NodeLink):
    """A node agent on another host, over its authenticated TLS connection. Messages to it go
    out through a sender thread of their own, so a slow or vanished host never blocks the
    master's loop; a send that fails closes the link (the master then waits for the node to
    reconnect, or declares it down after node_timeout)."""

    def __init__(self, name, connection, address, log):
        import queue
        import threading

        self.name = name
        self.connection = connection
        self.address = address
        self.log = log
        self.closed = False
        self._outbox = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._send_loop, name="node-link-%s" % name, daemon=True)

    def start(self):
        self._thread.start()

    def _send(self, type_, **fields):
        if not self.closed:
            self._outbox.put(protocol.node_message(type_, **fields))

    def _send_loop(self):
        while True:
            message = self._outbox.get()
            if message is None or self.closed:
                return
            try:
                self.connection.send(message)
            except Exception as e:  # OSError, ssl.SSLError, or a message too large to send
                self.log("node %s: cannot send %s: %s: %s; closing the link" % (
                    self.name, message.get("type"), type(e).__name__, e))
                self.close()
                return

    def info(self):
        return None

    def start_job(self, job, env):
        self._send("launch", job=job.to_dict(), env=env)

    def signal_job(self, job_id, attempt, signum):
        self._send("signal", job_id=job_id, attempt=attempt, signum=signum)

    def release(self, job_id, attempt):
        self._send("release", job_id=job_id, attempt=attempt)

    def kill(self, job_id, attempt):
        self._send("kill", job_id=job_id, attempt=attempt)

    def adopt(self, jobs):
        pass  # a remote node adopts its jobs itself and reports them when it registers

    def open_output(self, path, uid):
        return None  # output of remote jobs is not streamed through the master yet

    def close(self):
        if not self.closed:
            self.closed = True
            self._outbox.put(None)
            self.connection.close()
