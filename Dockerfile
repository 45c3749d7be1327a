# The clicktrail image: one image, every role (collector, sink, migrate) chosen by its command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 CLICKTRAIL_DATA_DIR=/var/lib/clicktrail
WORKDIR /app
COPY pyproject.toml README.md ./
COPY clicktrail clicktrail
COPY collector collector
COPY sink sink
COPY pixel pixel
COPY attribution attribution
COPY static static
# Editable, so the packages run from /app beside static/ (the pixel SDK they serve).
RUN pip install --no-cache-dir -e . \
 && useradd --system --home /var/lib/clicktrail --create-home clicktrail
USER clicktrail
EXPOSE 8080
CMD ["clicktrail", "collector", "--bind", "0.0.0.0:8080"]
