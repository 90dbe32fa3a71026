#!/bin/sh
# encode.sh — regenerates the golden wire bytes (*.bin) from their text-format sources
# (*.txtpb) with protoc-c --encode, i.e. Google's C++ protobuf encoder, independent of the
# protobuf-c packer that test_wire_golden checks against them.
#
# Run it only when the wire format is changed on purpose (a field added to sparq.proto
# and a golden message extended to cover it); commit the .txtpb and .bin together.
# The first line of each .txtpb names its message type: "# sparq.v1.Request".
set -eu
here=$(cd "$(dirname "$0")" && pwd)
proto_dir=$(cd "$here/../../ipc" && pwd)
for src in "$here"/*.txtpb; do
	type=$(head -n 1 "$src" | sed -n 's/^# *\(sparq\.v1\.[A-Za-z]*\) *$/\1/p')
	if [ -z "$type" ]; then
		echo "encode.sh: $src: first line must be '# sparq.v1.<Message>'" >&2
		exit 1
	fi
	protoc-c -I"$proto_dir" --encode="$type" sparq.proto <"$src" >"${src%.txtpb}.bin"
done
