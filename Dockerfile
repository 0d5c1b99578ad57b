# Parcours engine. Build: docker build -t parcours .   Run: docker run -p 2575:2575 -p 8080:8080 parcours
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PARCOURS_HOME=/var/lib/parcours \
    PARCOURS_ROUTES=/etc/parcours/routes.yaml

WORKDIR /opt/parcours
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY channels ./channels
COPY transformers ./transformers
COPY connectors ./connectors
COPY loinc ./loinc
COPY mappings ./mappings
COPY monitoring ./monitoring
RUN pip install --no-cache-dir . \
    && useradd --system --home-dir /var/lib/parcours parcours \
    && mkdir -p /var/lib/parcours/out /etc/parcours \
    && chown -R parcours /var/lib/parcours
COPY routes.yaml /etc/parcours/routes.yaml

USER parcours
VOLUME ["/var/lib/parcours"]
EXPOSE 2575 8080
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz').status == 200 else 1)"
ENTRYPOINT ["parcours"]
CMD ["serve"]
