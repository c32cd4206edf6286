# syntax=docker/dockerfile:1
#
# Two images from one build:
#   docker build --target wsbalancer  -t wsbalancer:0.1.0 .
#   docker build --target test-server -t wsbalancer-test-server:0.1.0 .
# (without --target, the last stage: wsbalancer). The runtime is distroless
# (glibc and CA certificates, no shell) and runs as uid 65532.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and build directory between builds;
# the binaries are copied out of the cached target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p wsbalancer -p test-server \
    && mkdir -p /out \
    && cp target/release/wsbalancer target/release/test-server /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS test-server
COPY --from=build /out/test-server /usr/local/bin/test-server
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/test-server"]

FROM gcr.io/distroless/cc-debian12:nonroot AS wsbalancer
COPY --from=build /out/wsbalancer /usr/local/bin/wsbalancer
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/wsbalancer"]
