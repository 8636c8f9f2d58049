# xrayd container image: runs as a non-root user, listens on 0.0.0.0:2000 (UDP segments, TCP
# sampling proxy) and 0.0.0.0:2100 (admin: /healthz, /readyz, /metrics), spools to /var/lib/xrayd.
#   docker build -t xrayd .
#   docker run --rm -p 2000:2000/udp -p 2000:2000/tcp -p 2100:2100 \
#     -e AWS_REGION=us-east-1 -v xrayd-spool:/var/lib/xrayd xrayd
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
RUN groupadd --system --gid 10001 xrayd \
 && useradd --system --uid 10001 --gid xrayd --home-dir /var/lib/xrayd --shell /usr/sbin/nologin xrayd \
 && mkdir -p /var/lib/xrayd/spool \
 && chown -R xrayd:xrayd /var/lib/xrayd \
 && chmod 0700 /var/lib/xrayd
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/xrayd
VOLUME ["/var/lib/xrayd"]
EXPOSE 2000/udp 2000/tcp 2100/tcp
# Liveness for plain docker; orchestrators should probe /healthz and /readyz themselves.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:2100/healthz', timeout=2); sys.exit(0)"]
# The drain (--drain-seconds 20) fits within docker stop's default 10 s only if shortened:
# pass --stop-timeout 30 to docker run, or set terminationGracePeriodSeconds >= 30 in Kubernetes.
ENTRYPOINT ["xrayd", "-b", "0.0.0.0:2000", "-t", "0.0.0.0:2000", "--admin-address", "0.0.0.0:2100", \
            "--spool-dir", "/var/lib/xrayd/spool", "--drain-seconds", "20"]
CMD []
