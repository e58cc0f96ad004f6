// pe_array.v -- a PE-array chunk: ROWS x COLS PEs, operand buffers A and W, an output buffer and
// the tile controller, for output-stationary (ws = 0) and weight-stationary (ws = 1) tiles.
//
// The cycle timing is the contract in hw_models/engines/pe_array.py (module docstring and
// PEArrayStepper); this module is that stepper in registers. Edge 0 is the rising edge at which
// `start` is sampled high (in IDLE); `done` is registered and high for the one cycle after edge
// tile_cycles(...).
//
//   OS: C[m x n] = A[m x k] (.) W[k x n], m <= ROWS, n <= COLS, k <= DEPTH.
//       A word q = column q of A (lane i = A[i][q]); W word q = row q of W (lane j = W[q][j]).
//       clear = 1 zeroes the PE accumulators at edge 0 (else a K-split tile adds to them);
//       writeback = 1 writes rows 0..m-1 to output words 0..m-1, one row a cycle.
//       cycles = k + PIPE + 2m + n - 1  (writeback)  |  k + PIPE + m + n  (no writeback)
//   WS: C[m x n] = A[m x k] (.) W[k x n], k <= ROWS, n <= COLS, m <= DEPTH.
//       W word q = row q of W (preloaded into PE row q); A word p = row p of A (lane i = A[p][i]).
//       Output row p is written to output word p. clear = 1 overwrites the word; clear = 0 adds
//       the row to it (the output buffer's accumulate port, for K-split tiles). `writeback` is
//       ignored: WS always writes.
//       cycles = k * (PIPE + 1) + m + n + 1
//
// The testbench fills A and W through their write ports and reads the output buffer through its
// read port (rdata one cycle after the address) while the chunk is idle (busy = 0).
// DONE_DELAY = 1 is a deliberately broken build (done one cycle late) used to test the tests.
`default_nettype none
module pe_array #(
    parameter integer PE_TYPE    = 0,      // 0 mac, 1 shift, 2 adder
    parameter integer ROWS       = 4,
    parameter integer COLS       = 4,
    parameter integer IN_W       = 8,
    parameter integer W_W        = 8,
    parameter integer ACC_W      = 32,
    parameter integer PIPE       = 1,      // PE pipeline depth P (1 or 2)
    parameter integer DEPTH      = 32,     // words in each buffer (>= ROWS, COLS)
    parameter integer DONE_DELAY = 0,      // debug only: 1 delays done by one cycle
    parameter integer AW         = $clog2(DEPTH),      // derived: buffer address width
    parameter integer DIM_W      = $clog2(DEPTH + 1)   // derived: width of m, n, k
) (
    input  wire                   clk,
    input  wire                   rst,
    // tile command, sampled with start
    input  wire                   start,
    input  wire                   ws,
    input  wire                   clear,
    input  wire                   writeback,
    input  wire [DIM_W-1:0]       m,
    input  wire [DIM_W-1:0]       n,
    input  wire [DIM_W-1:0]       k,
    output wire                   done,
    output wire                   busy,
    // buffer ports for the host / testbench
    input  wire                   a_we,
    input  wire [AW-1:0]          a_waddr,
    input  wire [ROWS*IN_W-1:0]   a_wdata,
    input  wire                   w_we,
    input  wire [AW-1:0]          w_waddr,
    input  wire [COLS*W_W-1:0]    w_wdata,
    input  wire                   o_re,
    input  wire [AW-1:0]          o_raddr,
    output wire [COLS*ACC_W-1:0]  o_rdata
);
    localparam [2:0] S_IDLE = 3'd0, S_FEED = 3'd1, S_WAIT = 3'd2, S_WRITE = 3'd3,
                     S_LOAD = 3'd4, S_STREAM = 3'd5, S_DRAIN = 3'd6;
    localparam [DIM_W-1:0] ONE = 1;
    localparam [ROWS-1:0]  ROW0 = 1;
    localparam [COLS-1:0]  COL0 = 1;

    // ================================================================ tile registers
    reg [2:0]        state;
    reg              ws_r, clear_r, wb_r;
    reg [DIM_W-1:0]  m_r, k_r;
    reg [DIM_W-1:0]  a_last_r;      // index of the last A word read: OS k-1, WS m-1
    reg [ROWS-1:0]   row_en;        // lanes that carry valid operands: OS i < m, WS i < k
    /* verilator lint_off UNUSEDSIGNAL */    // col_en[0]: column 0 is always enabled
    reg [COLS-1:0]   col_en;        // columns that pass valid operands: j < n
    /* verilator lint_on UNUSEDSIGNAL */
    reg [ROWS-1:0]   crow_oh;       // one-hot row of the watched corner PE: OS m-1, WS k-1
    reg [COLS-1:0]   ccol_oh;       // one-hot column of the corner PE: n-1
    reg [DIM_W-1:0]  addr;          // buffer read address
    reg [DIM_W-1:0]  row;           // OS: output row being written
    reg [DIM_W-1:0]  wcnt, rcnt;    // WS: output rows written / read ahead for accumulation
    reg              done_r;

    assign busy = (state != S_IDLE);
    wire start_ok = start && (state == S_IDLE);

    // ================================================================ operand buffers
    wire feed   = (state == S_FEED);
    wire a_ren  = feed || (state == S_STREAM);
    wire w_ren  = feed || (state == S_LOAD);
    wire [ROWS*IN_W-1:0] a_rdata;
    wire [COLS*W_W-1:0]  w_rdata;

    sram_dp #(.WIDTH(ROWS*IN_W), .DEPTH(DEPTH), .AW(AW)) u_abuf (
        .clk(clk), .we(a_we), .waddr(a_waddr), .wdata(a_wdata),
        .re(a_ren), .raddr(addr[AW-1:0]), .rdata(a_rdata));
    sram_dp #(.WIDTH(COLS*W_W), .DEPTH(DEPTH), .AW(AW)) u_wbuf (
        .clk(clk), .we(w_we), .waddr(w_waddr), .wdata(w_wdata),
        .re(w_ren), .raddr(addr[AW-1:0]), .rdata(w_rdata));

    // side-band registers alongside the buffer output registers
    reg              a_bv, a_blast;     // A word valid / last word of the stream
    reg [ROWS-1:0]   w_ld_oh;           // WS: PE row that latches the W word now on the output
    always @(posedge clk) begin
        if (rst) begin
            a_bv    <= 1'b0;
            a_blast <= 1'b0;
            w_ld_oh <= {ROWS{1'b0}};
        end else begin
            a_bv    <= a_ren;
            a_blast <= a_ren && (addr == a_last_r);
            w_ld_oh <= (state == S_LOAD) ? (ROW0 << addr) : {ROWS{1'b0}};
        end
    end

    // ================================================================ PE grid wiring
    // the last column's a/v/last and the last row's w leave the array unused
    /* verilator lint_off UNUSEDSIGNAL */
    // (unpacked arrays, one net per PE: a flat vector with one driver per PE makes Icarus
    // re-evaluate every reader on every change, quadratic in the PE count)
    wire [IN_W-1:0]            pe_a [0:ROWS*COLS-1];   // a_q of every PE, index i*COLS+j
    wire                       pe_v [0:ROWS*COLS-1];
    wire                       pe_l [0:ROWS*COLS-1];
    wire [W_W-1:0]             pe_w [0:ROWS*COLS-1];
    /* verilator lint_on UNUSEDSIGNAL */
    wire [ACC_W-1:0]           pe_acc [0:ROWS*COLS-1];
    wire [ROWS*COLS-1:0]       pe_pre, pe_ov, pe_ol;
    // one ROWS:1 row multiplexer (OR-chains down each column) serves both dataflows: OS selects
    // the row being written, WS the bottom used row k-1 (its psums feed the de-skew registers)
    wire [ROWS-1:0]            sel_oh = ws_r ? crow_oh : (ROW0 << row);
    wire [COLS*W_W-1:0]        w_skewed;   // OS: W lanes after their column skew
    wire clr = start_ok && clear && !ws;   // OS: zero the accumulators at edge 0

    genvar i, j;
    generate
        for (i = 0; i < ROWS; i = i + 1) begin : g_row
            // ---- A lane i: skew by i registers (OS) or i*PIPE registers (WS)
            wire [IN_W-1:0] lane = a_rdata[i*IN_W +: IN_W];
            wire            lv   = a_bv && row_en[i];
            wire [IN_W-1:0] sk_a;
            wire            sk_v, sk_l;
            if (i == 0) begin : g_noskew
                assign sk_a = lane;
                assign sk_v = lv;
                assign sk_l = a_blast;
            end else begin : g_skew
                localparam integer LEN = i * PIPE;
                reg [LEN*IN_W-1:0] sd;      // word t = the lane t+1 edges ago
                reg [LEN-1:0]      sv, sl;
                if (LEN == 1) begin : g_one
                    always @(posedge clk) begin
                        sd <= lane;
                        if (rst) begin sv <= 1'b0; sl <= 1'b0; end
                        else begin sv <= lv; sl <= a_blast; end
                    end
                end else begin : g_many
                    always @(posedge clk) begin
                        sd <= {sd[(LEN-1)*IN_W-1:0], lane};
                        if (rst) begin sv <= {LEN{1'b0}}; sl <= {LEN{1'b0}}; end
                        else begin sv <= {sv[LEN-2:0], lv}; sl <= {sl[LEN-2:0], a_blast}; end
                    end
                end
                if (PIPE == 1) begin : g_tap1
                    assign sk_a = sd[(LEN-1)*IN_W +: IN_W];
                    assign sk_v = sv[LEN-1];
                    assign sk_l = sl[LEN-1];
                end else begin : g_tap2     // OS taps after i registers, WS after i*PIPE
                    assign sk_a = ws_r ? sd[(LEN-1)*IN_W +: IN_W] : sd[(i-1)*IN_W +: IN_W];
                    assign sk_v = ws_r ? sv[LEN-1] : sv[i-1];
                    assign sk_l = ws_r ? sl[LEN-1] : sl[i-1];
                end
            end

            for (j = 0; j < COLS; j = j + 1) begin : g_col
                localparam integer P = i * COLS + j;
                wire [IN_W-1:0]  a_in;
                wire             v_in, l_in;
                wire [W_W-1:0]   w_in;
                wire [ACC_W-1:0] psum_in;
                if (j == 0) begin : g_left
                    assign a_in = sk_a;
                    assign v_in = sk_v;            // column 0 is always enabled (n >= 1)
                    assign l_in = sk_l;
                end else begin : g_inner
                    assign a_in = pe_a[P-1];
                    assign v_in = pe_v[P-1] && col_en[j];
                    assign l_in = pe_l[P-1];
                end
                if (i == 0) begin : g_top
                    assign w_in    = ws_r ? w_rdata[j*W_W +: W_W] : w_skewed[j*W_W +: W_W];
                    assign psum_in = {ACC_W{1'b0}};
                end else begin : g_below
                    assign w_in    = ws_r ? w_rdata[j*W_W +: W_W] : pe_w[P-COLS];
                    assign psum_in = pe_acc[P-COLS];
                end
                pe #(.PE_TYPE(PE_TYPE), .IN_W(IN_W), .W_W(W_W), .ACC_W(ACC_W), .PIPE(PIPE)) u_pe (
                    .clk(clk), .rst(rst), .ws(ws_r), .clr(clr),
                    .a_in(a_in), .v_in(v_in), .last_in(l_in),
                    .a_q(pe_a[P]), .v_q(pe_v[P]), .last_q(pe_l[P]),
                    .w_in(w_in), .w_ld(!ws_r || w_ld_oh[i]), .w_q(pe_w[P]),
                    .psum_in(psum_in), .acc_q(pe_acc[P]),
                    .pre_v(pe_pre[P]), .out_v(pe_ov[P]), .out_last(pe_ol[P]));
                // row multiplexer, column j: OR over rows 0..i of (row selected ? acc : 0)
                wire [ACC_W-1:0] col_or;
                if (i == 0) begin : g_or0
                    assign col_or = {ACC_W{sel_oh[0]}} & pe_acc[P];
                end else begin : g_or
                    assign col_or = g_row[i-1].g_col[j].col_or | ({ACC_W{sel_oh[i]}} & pe_acc[P]);
                end
            end
        end

        // ---- W lane j (OS): skew by j registers into PE(0, j)
        for (j = 0; j < COLS; j = j + 1) begin : g_wskew
            wire [W_W-1:0] lane = w_rdata[j*W_W +: W_W];
            if (j == 0) begin : g_noskew
                assign w_skewed[j*W_W +: W_W] = lane;
            end else begin : g_skew
                reg [j*W_W-1:0] sd;         // word t = the lane t+1 edges ago
                if (j == 1) begin : g_one
                    always @(posedge clk) sd <= lane;
                end else begin : g_many
                    always @(posedge clk) sd <= {sd[(j-1)*W_W-1:0], lane};
                end
                assign w_skewed[j*W_W +: W_W] = sd[(j-1)*W_W +: W_W];
            end
        end
    endgenerate

    // ================================================================ corner PE and row select
    // corner flags: PE(crow, ccol) = (m-1, n-1) in OS, (k-1, n-1) in WS
    wire [ROWS*COLS-1:0] corner_oh;
    generate
        for (i = 0; i < ROWS; i = i + 1) begin : g_coh
            assign corner_oh[i*COLS +: COLS] = ccol_oh & {COLS{crow_oh[i]}};
        end
    endgenerate
    wire corner_v   = |(pe_ov  & corner_oh);
    wire corner_l   = |(pe_ol  & corner_oh);
    wire corner_pre = |(pe_pre & corner_oh);

    // the row multiplexer's output: OS the row being written, WS row k-1's psums
    wire [COLS*ACC_W-1:0] bottom;
    generate
        for (j = 0; j < COLS; j = j + 1) begin : g_bottom
            assign bottom[j*ACC_W +: ACC_W] = g_row[ROWS-1].g_col[j].col_or;
        end
    endgenerate

    // ================================================================ WS de-skew
    // column j is delayed by n-1-j registers: taps t = 0..COLS-1-j, tap t selected when n-1 == j+t
    wire [COLS*ACC_W-1:0] ws_row;
    generate
        for (j = 0; j < COLS; j = j + 1) begin : g_dsk
            localparam integer LEN = COLS - 1 - j;
            wire [ACC_W-1:0] b = bottom[j*ACC_W +: ACC_W];
            wire [(LEN+1)*ACC_W-1:0] taps;     // word t = column j's bottom value t edges ago
            if (LEN == 0) begin : g_last
                assign taps = b;
            end else begin : g_regs
                reg [LEN*ACC_W-1:0] d;
                if (LEN == 1) begin : g_one
                    always @(posedge clk) d <= b;
                end else begin : g_many
                    always @(posedge clk) d <= {d[(LEN-1)*ACC_W-1:0], b};
                end
                assign taps = {d, b};
            end
            reg [ACC_W-1:0] pick;
            integer s;
            always @* begin
                pick = {ACC_W{1'b0}};
                for (s = 0; s <= LEN; s = s + 1)
                    pick = pick | ({ACC_W{ccol_oh[j+s]}} & taps[s*ACC_W +: ACC_W]);
            end
            assign ws_row[j*ACC_W +: ACC_W] = pick;
        end
    endgenerate

    // ================================================================ output buffer
    wire os_write = !ws_r && wb_r && (((state == S_WAIT) && corner_v && corner_l) ||
                                      (state == S_WRITE));
    wire ws_write = ws_r && busy && corner_v;                 // bottom of column n-1, de-skewed
    wire ws_accum = ws_r && !clear_r;
    wire ws_read  = ws_accum && busy && corner_pre;           // read the word one cycle ahead
    wire [COLS*ACC_W-1:0] o_old;                              // = o_rdata
    wire [COLS*ACC_W-1:0] ws_sum;
    generate
        for (j = 0; j < COLS; j = j + 1) begin : g_oacc
            assign ws_sum[j*ACC_W +: ACC_W] = ws_row[j*ACC_W +: ACC_W] + o_old[j*ACC_W +: ACC_W];
        end
    endgenerate
    wire [AW-1:0]         o_waddr = ws_r ? wcnt[AW-1:0] : row[AW-1:0];
    wire [COLS*ACC_W-1:0] o_wdata = !ws_r ? bottom : (ws_accum ? ws_sum : ws_row);

    wire o_we = os_write || ws_write;                        // (the testbench watches this)
    sram_dp #(.WIDTH(COLS*ACC_W), .DEPTH(DEPTH), .AW(AW)) u_obuf (
        .clk(clk), .we(o_we), .waddr(o_waddr), .wdata(o_wdata),
        .re(busy ? ws_read : o_re), .raddr(busy ? rcnt[AW-1:0] : o_raddr), .rdata(o_old));
    assign o_rdata = o_old;

    // ================================================================ controller
    always @(posedge clk) begin
        if (rst) begin
            state  <= S_IDLE;
            done_r <= 1'b0;
        end else begin
            done_r <= 1'b0;
            case (state)
                S_IDLE: if (start) begin
                    ws_r     <= ws;
                    clear_r  <= clear;
                    wb_r     <= writeback;
                    m_r      <= m;
                    k_r      <= k;
                    a_last_r <= ws ? (m - ONE) : (k - ONE);
                    row_en   <= ~({ROWS{1'b1}} << (ws ? k : m));
                    col_en   <= ~({COLS{1'b1}} << n);
                    crow_oh  <= ROW0 << (ws ? (k - ONE) : (m - ONE));
                    ccol_oh  <= COL0 << (n - ONE);
                    addr     <= {DIM_W{1'b0}};
                    row      <= {DIM_W{1'b0}};
                    wcnt     <= {DIM_W{1'b0}};
                    rcnt     <= {DIM_W{1'b0}};
                    state    <= ws ? S_LOAD : S_FEED;
                end
                // ---- output stationary
                S_FEED: begin
                    addr <= addr + ONE;
                    if (addr == k_r - ONE) state <= S_WAIT;
                end
                S_WAIT: if (corner_v && corner_l) begin      // corner PE accumulated its last pair
                    if (!wb_r || m_r == ONE) begin
                        done_r <= 1'b1;
                        state  <= S_IDLE;
                    end else begin
                        row   <= row + ONE;
                        state <= S_WRITE;
                    end
                end
                S_WRITE: begin
                    row <= row + ONE;
                    if (row == m_r - ONE) begin
                        done_r <= 1'b1;
                        state  <= S_IDLE;
                    end
                end
                // ---- weight stationary
                S_LOAD: begin
                    addr <= addr + ONE;
                    if (addr == k_r - ONE) begin
                        addr  <= {DIM_W{1'b0}};
                        state <= S_STREAM;
                    end
                end
                S_STREAM: begin
                    addr <= addr + ONE;
                    if (addr == m_r - ONE) state <= S_DRAIN;
                end
                default: ;                                   // S_DRAIN: wait for the last write
            endcase
            if (ws_read) rcnt <= rcnt + ONE;
            if (ws_write) begin
                wcnt <= wcnt + ONE;
                if (corner_l) begin
                    done_r <= 1'b1;
                    state  <= S_IDLE;
                end
            end
        end
    end

    generate
        if (DONE_DELAY == 0) begin : g_done
            assign done = done_r;
        end else begin : g_done_late
            reg done_d;
            always @(posedge clk) done_d <= rst ? 1'b0 : done_r;
            assign done = done_d;
        end
    endgenerate
endmodule
`default_nettype wire
