/*
 * test_wire_golden.c — locks the wire format. Both planes are an ABI between processes
 * built at different times (an engine linked against last month's libsparq talks to
 * today's sparqd), so an accidental change must fail a test, not a deployment:
 *
 * - control plane: one message of every Request and Response kind is built here field
 *   by field, packed with protobuf-c and compared byte for byte with the committed
 *   tests/wire-golden/<name>.bin, which encode.sh produced from <name>.txtpb with
 *   Google's encoder (protoc --encode), not with the packer under test. The .bin is then
 *   unpacked and re-packed (the decoder reads every field back) and sent through
 *   sparq_wire_send/recv on a SOCK_SEQPACKET pair (one packet, no length prefix);
 * - data plane: the ring descriptors and the region header live in shared memory, so
 *   their layout is the format; a filled descriptor is compared with committed bytes.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "shm.h"
#include "sparq.pb-c.h"
#include "wire.h"

#ifndef SPARQ_WIRE_GOLDEN_DIR
#error "SPARQ_WIRE_GOLDEN_DIR must name tests/wire-golden"
#endif

static int failures;

#define CHECK(cond, ...)                                                              \
	do {                                                                          \
		if (!(cond)) {                                                        \
			fprintf(stderr, "%s:%d: %s: ", __FILE__, __LINE__, #cond);    \
			fprintf(stderr, __VA_ARGS__);                                 \
			fputc('\n', stderr);                                          \
			failures++;                                                   \
		}                                                                     \
	} while (0)

/* Reads tests/wire-golden/<name>.bin; returns its length or -errno. */
static long golden_read(const char *name, uint8_t *buf, size_t cap)
{
	char path[512];
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "%s/%s.bin", SPARQ_WIRE_GOLDEN_DIR, name);
	f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -errno;
	}
	n = fread(buf, 1, cap, f);
	if (ferror(f) || !feof(f)) {
		fclose(f);
		fprintf(stderr, "%s: unreadable or larger than %zu bytes\n", path, cap);
		return -EIO;
	}
	fclose(f);
	return (long)n;
}

static void hexdump(const char *what, const uint8_t *p, size_t n)
{
	fprintf(stderr, "  %-8s", what);
	for (size_t i = 0; i < n; i++)
		fprintf(stderr, "%02x%s", p[i], (i % 32 == 31 && i + 1 < n) ? "\n          " : "");
	fputc('\n', stderr);
}

/*
 * The check for one message: packed bytes equal the golden ones; the golden bytes
 * unpack (as desc) and re-pack to themselves; they cross a SOCK_SEQPACKET pair intact.
 */
static void check_message(const char *name, const ProtobufCMessage *msg)
{
	uint8_t want[SPARQ_WIRE_MAX], got[SPARQ_WIRE_MAX], again[SPARQ_WIRE_MAX];
	long n_want = golden_read(name, want, sizeof(want));
	size_t n_got;
	ProtobufCMessage *back;

	if (n_want < 0) {
		failures++;
		return;
	}
	n_got = protobuf_c_message_get_packed_size(msg);
	CHECK(n_got == (size_t)n_want, "%s: packs to %zu bytes, golden has %ld", name, n_got,
	      n_want);
	if (n_got > sizeof(got)) {
		failures++;
		return;
	}
	protobuf_c_message_pack(msg, got);
	if (n_got != (size_t)n_want || memcmp(got, want, n_got)) {
		fprintf(stderr, "%s: packed bytes differ from the golden ones\n", name);
		hexdump("golden:", want, (size_t)n_want);
		hexdump("packed:", got, n_got);
		failures++;
	}

	back = protobuf_c_message_unpack(msg->descriptor, NULL, (size_t)n_want, want);
	CHECK(back != NULL, "%s: golden bytes do not unpack", name);
	if (back) {
		size_t n_again = protobuf_c_message_pack(back, again);
		CHECK(n_again == (size_t)n_want && !memcmp(again, want, n_again),
		      "%s: unpack + pack does not give the golden bytes back", name);
		protobuf_c_message_free_unpacked(back, NULL);
	}

	/* framing: the packet is the message, nothing around it */
	{
		int sv[2];
		unsigned n_fds = 99;
		ssize_t r;

		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv)) {
			CHECK(0, "socketpair: %s", strerror(errno));
			return;
		}
		CHECK(sparq_wire_send(sv[0], msg, NULL, 0) == 0, "%s: sparq_wire_send", name);
		r = sparq_wire_recv(sv[1], again, sizeof(again), NULL, 0, &n_fds);
		CHECK(r == n_want && !memcmp(again, want, (size_t)n_want),
		      "%s: the packet is not the golden bytes (got %zd bytes)", name, r);
		CHECK(n_fds == 0, "%s: %u fds arrived, none sent", name, n_fds);
		close(sv[0]);
		close(sv[1]);
	}
}

static Sparq__V1__Geometry geometry_llama(void)
{
	Sparq__V1__Geometry g = SPARQ__V1__GEOMETRY__INIT;

	g.n_layers = 32;
	g.n_q_heads = 32;
	g.n_kv_heads = 8;
	g.head_dim = 128;
	g.dtype = SPARQ__V1__DTYPE__DTYPE_BF16;
	return g;
}

static void check_requests(void)
{
	Sparq__V1__Request rq = SPARQ__V1__REQUEST__INIT;

	{
		Sparq__V1__Hello h = SPARQ__V1__HELLO__INIT;
		h.protocol_version = 1;
		h.client_name = "vllm-0";
		h.shm_bytes = 64ull << 20;
		rq.id = 1;
		rq.body_case = SPARQ__V1__REQUEST__BODY_HELLO;
		rq.hello = &h;
		check_message("req_hello", &rq.base);
	}
	{
		Sparq__V1__CreateSession c = SPARQ__V1__CREATE_SESSION__INIT;
		Sparq__V1__Geometry g = geometry_llama();
		Sparq__V1__Params p = SPARQ__V1__PARAMS__INIT;
		p.l = -1;
		p.l_set = 1;
		p.ratio = 8.0f;
		p.blend = SPARQ__V1__BLEND__BLEND_ON;
		c.geometry = &g;
		c.defaults = &p;
		c.persistent = 1;
		c.label = "chat-7";
		rq.id = 2;
		rq.body_case = SPARQ__V1__REQUEST__BODY_CREATE;
		rq.create = &c;
		check_message("req_create", &rq.base);
	}
	{
		Sparq__V1__SessionRef r = SPARQ__V1__SESSION_REF__INIT;
		r.session = 0x123456789abcdef0ull;
		rq.id = 3;
		rq.body_case = SPARQ__V1__REQUEST__BODY_CLOSE;
		rq.close = &r;
		check_message("req_close", &rq.base);

		r.session = 1048577;
		rq.id = 4;
		rq.body_case = SPARQ__V1__REQUEST__BODY_PARK;
		rq.park = &r;
		check_message("req_park", &rq.base);

		rq.id = 12;
		rq.body_case = SPARQ__V1__REQUEST__BODY_DROP;
		rq.drop = &r;
		check_message("req_drop", &rq.base);
	}
	{
		Sparq__V1__Resume r = SPARQ__V1__RESUME__INIT;
		r.session = 1048577;
		r.to_ram = 1;
		rq.id = 5;
		rq.body_case = SPARQ__V1__REQUEST__BODY_RESUME;
		rq.resume = &r;
		check_message("req_resume", &rq.base);
	}
	{
		Sparq__V1__ListSessions l = SPARQ__V1__LIST_SESSIONS__INIT;
		rq.id = 6;
		rq.body_case = SPARQ__V1__REQUEST__BODY_LIST;
		rq.list = &l;
		check_message("req_list", &rq.base);
	}
	{
		Sparq__V1__Append a = SPARQ__V1__APPEND__INIT;
		a.session = 1048577;
		a.layer = 31;
		a.n_tokens = 4096;
		a.k_off = 4096;
		a.v_off = 4096 + (8ull << 20);
		rq.id = 7;
		rq.body_case = SPARQ__V1__REQUEST__BODY_APPEND;
		rq.append = &a;
		check_message("req_append", &rq.base);
	}
	{
		Sparq__V1__Attend a = SPARQ__V1__ATTEND__INIT;
		Sparq__V1__AttendEntry e0 = SPARQ__V1__ATTEND_ENTRY__INIT;
		Sparq__V1__AttendEntry e1 = SPARQ__V1__ATTEND_ENTRY__INIT;
		Sparq__V1__AttendEntry *es[2] = { &e0, &e1 };
		Sparq__V1__Params p = SPARQ__V1__PARAMS__INIT;
		e0.session = 1048577;
		e0.q_off = 4096;
		e0.y_off = 8192;
		e0.alpha_off = 12288;
		p.r = 32;
		p.k = 256;
		p.dense = 1;
		e1.session = 1048578;
		e1.q_off = 16384;
		e1.y_off = 20480;
		e1.params = &p;
		a.layer = 3;
		a.n_entries = 2;
		a.entries = es;
		rq.id = 8;
		rq.body_case = SPARQ__V1__REQUEST__BODY_ATTEND;
		rq.attend = &a;
		check_message("req_attend", &rq.base);
	}
	{
		Sparq__V1__Select s = SPARQ__V1__SELECT__INIT;
		Sparq__V1__Params p = SPARQ__V1__PARAMS__INIT;
		p.r = 16;
		p.k = 64;
		p.l = 0;
		p.l_set = 1;
		p.blend = SPARQ__V1__BLEND__BLEND_OFF;
		s.session = 1048577;
		s.layer = 0;
		s.q_off = 4096;
		s.sel_off = 8192;
		s.sel_cap = 512;
		s.n_sel_off = 24576;
		s.params = &p;
		rq.id = 9;
		rq.body_case = SPARQ__V1__REQUEST__BODY_SELECT;
		rq.select = &s;
		check_message("req_select", &rq.base);
	}
	{
		Sparq__V1__Gather g = SPARQ__V1__GATHER__INIT;
		g.session = 1048577;
		g.layer = 1;
		g.kv_head = 7;
		g.n = 64;
		g.pos_off = 4096;
		g.out_off = 8192;
		rq.id = 10;
		rq.body_case = SPARQ__V1__REQUEST__BODY_GATHER;
		rq.gather = &g;
		check_message("req_gather", &rq.base);
	}
	{
		Sparq__V1__Stats s = SPARQ__V1__STATS__INIT;
		rq.id = 11;
		rq.body_case = SPARQ__V1__REQUEST__BODY_STATS;
		rq.stats = &s;
		check_message("req_stats", &rq.base);
	}
	{
		Sparq__V1__GetConfig g = SPARQ__V1__GET_CONFIG__INIT;
		rq.id = 13;
		rq.body_case = SPARQ__V1__REQUEST__BODY_CONFIG;
		rq.config = &g;
		check_message("req_config", &rq.base);
	}
}

static void check_responses(void)
{
	Sparq__V1__Response rs = SPARQ__V1__RESPONSE__INIT;

	{
		Sparq__V1__Error e = SPARQ__V1__ERROR__INIT;
		e.code = -ERANGE;
		e.message = "q_off: outside the data area";
		rs.id = 9;
		rs.body_case = SPARQ__V1__RESPONSE__BODY_ERROR;
		rs.error = &e;
		check_message("resp_error", &rs.base);
	}
	{
		Sparq__V1__HelloReply h = SPARQ__V1__HELLO_REPLY__INIT;
		h.protocol_version = 1;
		h.server_version = "0.1.0";
		h.backend = "cpu";
		h.shm_bytes = 67379200;
		h.ring_entries = 256;
		h.client_id = 7;
		rs.id = 1;
		rs.body_case = SPARQ__V1__RESPONSE__BODY_HELLO;
		rs.hello = &h;
		check_message("resp_hello", &rs.base);
	}
	{
		Sparq__V1__SessionCreated c = SPARQ__V1__SESSION_CREATED__INIT;
		c.session = 1048577;
		rs.id = 2;
		rs.body_case = SPARQ__V1__RESPONSE__BODY_CREATED;
		rs.created = &c;
		check_message("resp_created", &rs.base);
	}
	{
		Sparq__V1__Ok ok = SPARQ__V1__OK__INIT;
		rs.id = 3;
		rs.body_case = SPARQ__V1__RESPONSE__BODY_OK;
		rs.ok = &ok;
		check_message("resp_ok", &rs.base);
	}
	{
		Sparq__V1__SessionList l = SPARQ__V1__SESSION_LIST__INIT;
		Sparq__V1__SessionInfo a = SPARQ__V1__SESSION_INFO__INIT;
		Sparq__V1__SessionInfo b = SPARQ__V1__SESSION_INFO__INIT;
		Sparq__V1__SessionInfo *ss[2] = { &a, &b };
		Sparq__V1__Geometry ga = geometry_llama();
		Sparq__V1__Geometry gb = SPARQ__V1__GEOMETRY__INIT;
		a.session = 1048577;
		a.geometry = &ga;
		a.tokens = 32768;
		a.persistent = 1;
		a.parked = 1;
		a.open = 0;
		a.owner_uid = 1000;
		a.owner_pid = 4242;
		a.label = "chat-7";
		gb.n_layers = 1;
		gb.n_q_heads = 4;
		gb.n_kv_heads = 4;
		gb.head_dim = 64;
		gb.dtype = SPARQ__V1__DTYPE__DTYPE_F16;
		b.session = 1048578;
		b.geometry = &gb;
		b.tokens = 1;
		b.open = 1;
		b.owner_uid = 1000;
		b.owner_pid = 4243;
		l.n_sessions = 2;
		l.sessions = ss;
		rs.id = 6;
		rs.body_case = SPARQ__V1__RESPONSE__BODY_LIST;
		rs.list = &l;
		check_message("resp_list", &rs.base);
	}
	{
		Sparq__V1__StatsReply s = SPARQ__V1__STATS_REPLY__INIT;
		Sparq__V1__OpStats o0 = SPARQ__V1__OP_STATS__INIT;
		Sparq__V1__OpStats o1 = SPARQ__V1__OP_STATS__INIT;
		Sparq__V1__OpStats *os[2] = { &o0, &o1 };
		o0.op = "attend";
		o0.count = 100;
		o0.errors = 1;
		o0.p50_ns = 15000;
		o0.p99_ns = 40000;
		o1.op = "append";
		o1.count = 4096;
		s.backend = "cpu";
		s.backend_detail = "avx2+f16c, 2 threads";
		s.clients = 2;
		s.sessions = 3;
		s.n_ops = 2;
		s.ops = os;
		s.ram_capacity = 8ull << 30;
		s.ram_used = 1ull << 30;
		s.nvme_capacity = 64ull << 30;
		s.nvme_used = 4096;
		s.ram_records_read = 123456;
		s.nvme_records_read = 789;
		s.nvme_bytes_read = 3231744;
		s.nvme_bytes_written = 1ull << 20;
		s.demotions = 5;
		s.promotions = 3;
		s.parks = 2;
		s.resumes = 1;
		s.read_amplification = 1.25;
		s.uptime_ns = 5000000000ull;
		rs.id = 11;
		rs.body_case = SPARQ__V1__RESPONSE__BODY_STATS;
		rs.stats = &s;
		check_message("resp_stats", &rs.base);
	}
	{
		Sparq__V1__ConfigReply cr = SPARQ__V1__CONFIG_REPLY__INIT;
		Sparq__V1__ConfigEntry e0 = SPARQ__V1__CONFIG_ENTRY__INIT;
		Sparq__V1__ConfigEntry e1 = SPARQ__V1__CONFIG_ENTRY__INIT;
		Sparq__V1__ConfigEntry *es[2] = { &e0, &e1 };
		e0.key = "backend";
		e0.value = "cpu";
		e1.key = "ring-entries";
		e1.value = "256";
		cr.n_entries = 2;
		cr.entries = es;
		cr.server_version = "0.1.0";
		rs.id = 13;
		rs.body_case = SPARQ__V1__RESPONSE__BODY_CONFIG;
		rs.config = &cr;
		check_message("resp_config", &rs.base);
	}
}

/* Compares a struct's bytes with the committed little-endian image. */
static void check_bytes(const char *what, const void *p, const uint8_t *want, size_t n)
{
	if (memcmp(p, want, n)) {
		fprintf(stderr, "%s: layout differs from the committed bytes\n", what);
		hexdump("golden:", want, n);
		hexdump("struct:", p, n);
		failures++;
	}
}

static void check_shm_layout(void)
{
	struct sparq_sqe sqe;
	struct sparq_cqe cqe;
	struct sparq_attend_desc ad;
	static const uint8_t sqe_golden[64] = {
		0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,	/* user_data */
		0x02, 0x00, 0x00, 0x00,				/* op, flags, reserved */
		0x03, 0x00, 0x00, 0x00,				/* layer */
		0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,	/* session */
		0x02, 0x00, 0x00, 0x00,				/* n */
		0x07, 0x00, 0x00, 0x00,				/* kv_head */
		0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,	/* off[0] */
		0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,	/* off[1] */
		0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,	/* off[2] */
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,	/* reserved2 */
	};
	static const uint8_t cqe_golden[16] = {
		0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,	/* user_data */
		0xde, 0xff, 0xff, 0xff,				/* res = -34 */
		0x01, 0x00, 0x00, 0x00,				/* bad_item */
	};
	static const uint8_t ad_golden[80] = {
		0x01, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00,	/* session */
		0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,	/* q_off */
		0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,	/* y_off */
		0x00, 0x30, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,	/* alpha_off */
		0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,	/* sel_off */
		0x00, 0x50, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,	/* n_sel_off */
		0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,	/* sel_cap, reserved */
		0x10, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00,	/* r, k */
		0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x3e,	/* l = -1, ratio = 0.125 */
		0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,	/* blend, dense, l_set, use_defaults */
	};

	CHECK(sizeof(struct sparq_sqe) == 64, "sqe is %zu bytes", sizeof(struct sparq_sqe));
	CHECK(sizeof(struct sparq_cqe) == 64, "cqe is %zu bytes", sizeof(struct sparq_cqe));
	CHECK(sizeof(struct sparq_attend_desc) == 80, "attend_desc is %zu bytes",
	      sizeof(struct sparq_attend_desc));
	CHECK(sizeof(struct sparq_shm_params) == 20, "shm_params is %zu bytes",
	      sizeof(struct sparq_shm_params));

	memset(&sqe, 0, sizeof(sqe));
	sqe.user_data = 0x0102030405060708ull;
	sqe.op = SPARQ_OP_ATTEND;
	sqe.layer = 3;
	sqe.session = 0x1122334455667788ull;
	sqe.n = 2;
	sqe.kv_head = 7;
	sqe.off[0] = 0x1000;
	sqe.off[1] = 0x2000;
	sqe.off[2] = 0x100000000ull;
	check_bytes("sparq_sqe", &sqe, sqe_golden, sizeof(sqe_golden));
	CHECK(offsetof(struct sparq_sqe, reserved2) == 56, "sqe.reserved2 at %zu",
	      offsetof(struct sparq_sqe, reserved2));

	memset(&cqe, 0, sizeof(cqe));
	cqe.user_data = 9;
	cqe.res = -34;
	cqe.bad_item = 1;
	check_bytes("sparq_cqe", &cqe, cqe_golden, sizeof(cqe_golden));
	CHECK(offsetof(struct sparq_cqe, why) == 16 && sizeof(cqe.why) == 48,
	      "cqe.why at %zu, %zu bytes", offsetof(struct sparq_cqe, why), sizeof(cqe.why));

	memset(&ad, 0, sizeof(ad));
	ad.session = 0x100001;
	ad.q_off = 0x1000;
	ad.y_off = 0x2000;
	ad.alpha_off = 0x3000;
	ad.sel_off = 0x4000;
	ad.n_sel_off = 0x5000;
	ad.sel_cap = 512;
	ad.params.r = 16;
	ad.params.k = 64;
	ad.params.l = -1;
	ad.params.ratio = 0.125f;
	ad.params.blend = 1;
	ad.params.l_set = 1;
	check_bytes("sparq_attend_desc", &ad, ad_golden, sizeof(ad_golden));

	/* the header: layout fields first, then each cursor on its own cache line */
	CHECK(offsetof(struct sparq_shm_header, magic) == 0 &&
		      offsetof(struct sparq_shm_header, version) == 4 &&
		      offsetof(struct sparq_shm_header, size) == 8 &&
		      offsetof(struct sparq_shm_header, ring_entries) == 16 &&
		      offsetof(struct sparq_shm_header, sq_off) == 24 &&
		      offsetof(struct sparq_shm_header, cq_off) == 32 &&
		      offsetof(struct sparq_shm_header, data_off) == 40 &&
		      offsetof(struct sparq_shm_header, data_bytes) == 48,
	      "header layout fields moved");
	CHECK(offsetof(struct sparq_shm_header, sq_head) == 64 &&
		      offsetof(struct sparq_shm_header, sq_tail) == 128 &&
		      offsetof(struct sparq_shm_header, cq_head) == 192 &&
		      offsetof(struct sparq_shm_header, cq_tail) == 256,
	      "header cursors moved: sq_head %zu sq_tail %zu cq_head %zu cq_tail %zu",
	      offsetof(struct sparq_shm_header, sq_head),
	      offsetof(struct sparq_shm_header, sq_tail),
	      offsetof(struct sparq_shm_header, cq_head),
	      offsetof(struct sparq_shm_header, cq_tail));
	CHECK(SPARQ_SHM_MAGIC == 0x44515053u && SPARQ_PROTOCOL_VERSION == 1u,
	      "magic %#x version %u", SPARQ_SHM_MAGIC, SPARQ_PROTOCOL_VERSION);
	CHECK(SPARQ_OP_APPEND == 1 && SPARQ_OP_ATTEND == 2 && SPARQ_OP_SELECT == 3 &&
		      SPARQ_OP_GATHER == 4 && SPARQ_OP_NOP == 5,
	      "ring op codes renumbered");
}

int main(void)
{
	check_requests();
	check_responses();
	check_shm_layout();
	if (failures) {
		fprintf(stderr, "test_wire_golden: %d check(s) failed\n", failures);
		return 1;
	}
	printf("test_wire_golden: 20 messages and 4 shared-memory layouts match\n");
	return 0;
}
