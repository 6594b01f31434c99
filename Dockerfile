# Multi-stage build: a static binary on an empty base, running as non-root.
#
# rotor must run with host networking (docker run --network host): it binds
# outbound sockets to the host's own addresses, and inside a container's
# network namespace those addresses do not exist (every connection would
# leave through the bridge's NAT from one address).
#
#   docker build -t rotor .
#   docker run --rm --network host -e IP_POOL=203.0.113.10,203.0.113.11 \
#     -e PROXY_USER=u -e PROXY_PASS=p -e LISTEN_ADDR=0.0.0.0:7777 rotor
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The version --version prints (.git stays out of the build context, so Go
# cannot stamp a revision): docker build --build-arg VERSION=v1.2.3 .
ARG VERSION=
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/rotor ./cmd/rotor

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/
COPY --from=build /out/rotor /rotor
USER 65534:65534
ENTRYPOINT ["/rotor"]
