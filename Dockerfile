# syntax=docker/dockerfile:1
# yiyun's image: one static binary (musl, no libc needed at run time) on a distroless base with
# no shell, run as a non-root user. Every component is `yiyun <component>`; the chart sets the
# arguments. Build and push (README: "Install on a real cluster"):
#   docker build -t registry.example.gov.cn/yiyun/yiyun:0.1.0 .
#   docker push registry.example.gov.cn/yiyun/yiyun:0.1.0
# The build stage runs `make release`, the same command that builds the release binary outside
# a container (a test checks the two agree on the binary's path).

FROM docker.io/library/rust:1.95-bookworm AS build
# musl-tools: the C parts of ring and SQLite for musl; protoc: the API's and etcd's .proto files.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
ENV CARGO_TARGET_DIR=/src/target
RUN make release

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/yiyun /usr/local/bin/yiyun
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/yiyun"]
