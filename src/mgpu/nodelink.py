"""The one interface through which the master reaches a node.

Owns: what the master may ask of a node (describe itself, start, signal and release a job,
re-adopt jobs after a restart, open a job's output). The master's own host is a LocalNodeLink
to an in-process NodeAgent; a remote host gets the same interface over TCP, so the controller and
the master treat both alike. Must not: decide anything.
"""


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
