# setuptools still builds cffi extensions through cffi_modules; all metadata is in pyproject.toml
from setuptools import Extension, setup

# the consumer's Message objects per batch, the producer's rich-queue records (csrc/messages.c): a module that
# uses the CPython API (as _produce and _commit below do); everything else is reached through cffi
messages = Extension("shmlog.core._messages", sources=["csrc/messages.c", "csrc/rich_queue.c"],
                     depends=["csrc/rich_queue.h", "csrc/rich_record.h"],
                     extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"])

# the mirror's produce loop over a zero-copy run (csrc/produce.c): the same
# CPython API, for the same reason (a call per record is the cost)
produce = Extension("shmlog.core._produce", sources=["csrc/produce.c", "csrc/partitioner.c"],
                    include_dirs=["csrc"], extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"])

# the producer's commit crossings into the core, holding the GIL unless the core must wait
# (csrc/commit_call.c): the same CPython API, so a streaming producer keeps the GIL
commit = Extension("shmlog.core._commit", sources=["csrc/commit_call.c"], include_dirs=["csrc"],
                   depends=["csrc/log.h", "csrc/keyed.h", "csrc/rich_record.h"],
                   extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"])

# Producer.send()'s fast branches (csrc/send.c): the call itself is most of a
# send's cost in Python, so its common forms run as one C call
send = Extension("shmlog.core._send", sources=["csrc/send.c", "csrc/partitioner.c"],
                 depends=["csrc/rich_queue.h", "csrc/rich_record.h"], include_dirs=["csrc"], extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"])

setup(cffi_modules=["shmlog/core/_build.py:ffibuilder"], ext_modules=[messages, produce, commit, send])
