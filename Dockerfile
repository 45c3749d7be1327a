# The clicktrail image: one image, every role (collector, sink, migrate) chosen by its command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 CLICKTRAIL_DATA_DIR=/var/lib/clicktrail
WORKDIR /src
COPY pyproject.toml README.md ./
COPY clicktrail clicktrail
COPY collector collector
COPY sink sink
COPY pixel pixel
COPY attribution attribution
COPY reporting reporting
COPY static static
# A regular (wheel) install: the pixel SDK and the dashboard travel inside the package as data,
# so the source tree is not needed at run time.
RUN pip install --no-cache-dir . \
 && cd / && rm -rf /src \
 && useradd --system --home /var/lib/clicktrail --create-home clicktrail
WORKDIR /var/lib/clicktrail
USER clicktrail
EXPOSE 8080
CMD ["clicktrail", "collector", "--bind", "0.0.0.0:8080"]
