# scan-api, built in one stage and run from a small one as a non-root user.
#
#   docker build -t scan-api .
#   docker compose up        # with Redis 7 and PostgreSQL 16 (docker-compose.yml)

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p scan-api --locked \
    && cp target/release/scan-api /usr/local/bin/scan-api

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/scan-api --create-home scan-api
COPY --from=build /usr/local/bin/scan-api /usr/local/bin/scan-api
USER scan-api
WORKDIR /var/lib/scan-api
ENV BIND=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/scan-api"]
CMD ["serve"]
