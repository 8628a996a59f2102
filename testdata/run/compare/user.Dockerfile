# USER, WORKDIR, SHELL, exec form and build args (heredocs: see the e2e test
# heredoc_run_and_shell; the Debian buildah used for comparison predates them).
ARG BASE
FROM ${BASE}
ARG GREETING=hi
WORKDIR /work/dir
RUN echo "$GREETING" > greeting && id -u > uid
USER app
RUN touch /tmp/by-app && mkdir -p /tmp/data && id > /tmp/data/id
USER root:staff
RUN ["/bin/sh", "-c", "touch /by-root-staff"]
SHELL ["/bin/sh", "-e", "-c"]
RUN echo "shell is -e" > /shell
