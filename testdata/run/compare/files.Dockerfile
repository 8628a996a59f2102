# Adds, changes and deletes files of every kind; kiln and buildah must end with the same tree.
ARG BASE
FROM ${BASE}
RUN echo hello > /hello && ln -s /hello /hello-link && ln /hello /hello-hard \
 && mkfifo /fifo && chmod 4755 /hello && mkdir -p /opt/a/b && echo deep > /opt/a/b/c
RUN rm /etc/group && chmod 600 /etc/passwd && chown 1000:50 /opt/a/b/c && rm -rf /opt/a/b
# Replacing a directory of a lower layer makes it opaque.
RUN rm -rf /home/app && mkdir -p /home/app/new && touch /home/app/new/f
# Renaming a directory copies it (no overlay redirects).
RUN mv /opt/a /opt/renamed && echo more >> /hello
