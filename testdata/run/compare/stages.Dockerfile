# RUN in two stages, one copying from the other.
ARG BASE
FROM ${BASE} AS build
RUN mkdir -p /out && for i in 1 2 3; do echo "file $i" > /out/f$i; done
FROM ${BASE}
COPY --from=build /out /opt/out
RUN cat /opt/out/f* > /opt/all && rm /opt/out/f2
