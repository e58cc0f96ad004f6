// sparse_frontend.v -- the front end shared by the ViTCoD sparser-engine units (sparse_sddmm,
// sparse_spmm): header registers, row walker, segment FIFO, wave issuer, index buffer and the
// lines' beat counter.
//
// The timing is the contract in hw_models/engines/sparse_attention.py (module docstring,
// "Sparser engine"); this module is _FrontEnd of that file in registers. Edge 0 samples `start`
// with the header (rows, nnz, d).
//
//   Row walker: pointer-buffer word b = row_ptr[R*b+1 .. R*b+R] (lane n = row_ptr[R*b+n+1]; lanes
//     past `rows` are ignored). Word b is addressed in the cycle after edge b, is on the buffer
//     output after edge b+1 and at edge b+2 `walked` takes its last pointer (clipped to rows) and
//     the block's non-empty rows enter the segment FIFO as (row, end pointer) entries.
//   Segment FIFO: SEGD >= MAX_ROWS registers (it holds every row of the matrix, the walker never
//     stalls); the issuer reads its first L entries combinationally.
//   Wave issue: at edge t, wave w (nonzeros wL .. min(nnz, (w+1)L)-1) is issued when the lines
//     are free (idle, or presenting their last beat C-1) and `walked` >= e_end(w). The lines latch
//     valid / row (found in the FIFO window: the first entry whose end > e) / column (index-buffer
//     word w, read ahead: addressed from the cycle in which wave w-1 issues) and the wave flags
//     first_cont (its first row began in the previous wave), last_cont (its last row continues)
//     and final (the last wave); fully consumed FIFO entries are popped.
//   Beats: after an issue edge the lines present beat 0 .. C-1 (C = ceil(d / W)), one per cycle;
//     lane_mask has the lanes < d of the current beat.
//
// Index-buffer word w = col_idx[w*L .. w*L+L-1] (lane l = col_idx[w*L+l], CW bits each).
// nnz == 0: no walker, `empty_go` is high for the cycle after edge 0 (the unit's done is at edge 1).
// `finish` (from the unit, the edge its done rises) ends the run.
`default_nettype none
module sparse_frontend #(
    parameter integer L        = 4,      // lines
    parameter integer W        = 4,      // MACs per line
    parameter integer R        = 2,      // row pointers read per cycle
    parameter integer DMAX     = 8,      // largest head dim d
    parameter integer MAX_ROWS = 16,
    parameter integer MAX_COLS = 16,
    parameter integer MAX_NNZ  = MAX_ROWS * MAX_COLS,
    // derived
    parameter integer CMAX = (DMAX + W - 1) / W,                       // most beats
    parameter integer BW   = (CMAX > 1) ? $clog2(CMAX) : 1,            // beat counter
    parameter integer DW   = $clog2(DMAX + 1),                         // d
    parameter integer NW   = $clog2(MAX_ROWS + 1),                     // rows
    parameter integer RW   = (MAX_ROWS > 1) ? $clog2(MAX_ROWS) : 1,    // a row index
    parameter integer CW   = (MAX_COLS > 1) ? $clog2(MAX_COLS) : 1,    // a column index
    parameter integer PW   = $clog2(MAX_NNZ + 1),                      // a pointer, nnz
    parameter integer PD   = (MAX_ROWS + R - 1) / R,                   // pointer-buffer words
    parameter integer PAW  = (PD > 1) ? $clog2(PD) : 1,
    parameter integer ND   = (MAX_NNZ + L - 1) / L,                    // index-buffer words (waves)
    parameter integer NAW  = (ND > 1) ? $clog2(ND) : 1
) (
    input  wire               clk,
    input  wire               rst,
    input  wire               start,
    input  wire [NW-1:0]      rows,
    input  wire [PW-1:0]      nnz,
    input  wire [DW-1:0]      d,
    input  wire               finish,
    output wire               busy,
    output reg                empty_go,
    // host write ports
    input  wire               ptr_we,
    input  wire [PAW-1:0]     ptr_waddr,
    input  wire [R*PW-1:0]    ptr_wdata,
    input  wire               idx_we,
    input  wire [NAW-1:0]     idx_waddr,
    input  wire [L*CW-1:0]    idx_wdata,
    // per-wave side buffers of the unit (e.g. the SpMM values) read in step with the index buffer
    output wire               nz_re,
    output wire [NAW-1:0]     nz_raddr,
    output wire               issue,        // a wave is issued at the coming edge
    // the lines, as presented in the current cycle
    output reg                active,
    output reg  [BW-1:0]      beat,
    output wire               beat_last,    // beat == C-1
    output wire [W-1:0]       lane_mask,    // lanes < d of this beat
    output reg  [L-1:0]       ln_valid,
    output reg  [L*RW-1:0]    ln_row,
    output reg  [L*CW-1:0]    ln_col,
    output reg                w_first_cont,
    output reg                w_last_cont,
    output reg                w_final
);
    localparam integer RBW  = $clog2(MAX_ROWS + R);       // row base of a pointer block
    localparam integer EW   = $clog2(MAX_NNZ + L);        // CSR positions up to MAX_NNZ + L - 1
    localparam integer SEGD = 1 << RW;                    // segment FIFO entries (>= MAX_ROWS)
    localparam [RBW-1:0] R_STEP = R[RBW-1:0];
    localparam [EW-1:0]  L_STEP = L[EW-1:0];

    // ================================================================ header and run state
    reg              run;
    reg  [NW-1:0]    rows_r;
    reg  [PW-1:0]    nnz_r;
    reg  [BW-1:0]    clast;         // C - 1
    reg  [W-1:0]     mask_last;     // lanes < d of the last beat
    assign busy = run || empty_go;
    wire start_ok = start && !busy;

    // C - 1 = (d - 1) / W and the last beat's lanes, from the header
    reg  [BW-1:0]    clast_n;
    reg  [W-1:0]     mask_last_n;
    integer          dm1, cq, ci;
    always @* begin
        dm1 = (d == {DW{1'b0}}) ? 0 : ({{(32-DW){1'b0}}, d} - 1);
        cq  = dm1 / W;
        clast_n = cq[BW-1:0];
        for (ci = 0; ci < W; ci = ci + 1)
            mask_last_n[ci] = (ci <= dm1 - cq * W);
    end

    // ================================================================ row walker
    reg  [RBW-1:0]   rbase;         // first row of the block being addressed
    reg  [PAW-1:0]   blk;           // its pointer-buffer word
    reg              pv;            // a block is on the pointer-buffer output
    reg  [RBW-1:0]   pbase;         // its first row
    reg  [PW-1:0]    walked;        // last pointer walked (= the last pointer pushed)
    wire             ptr_re = run && (rbase < {{(RBW-NW){1'b0}}, rows_r});
    wire [R*PW-1:0]  ptr_rdata;

    sram_dp #(.WIDTH(R*PW), .DEPTH(PD), .AW(PAW)) u_ptrbuf (
        .clk(clk), .we(ptr_we), .waddr(ptr_waddr), .wdata(ptr_wdata),
        .re(ptr_re), .raddr(blk), .rdata(ptr_rdata));

    // the block's lanes: pointers past `rows` read as nnz (= row_ptr[rows]); a lane pushes its
    // row when its pointer is above the previous one (a non-empty row)
    reg  [R*PW-1:0]  lp;            // clipped pointers
    reg  [R-1:0]     push;
    reg  [R*RW-1:0]  push_row;
    reg  [R*RW-1:0]  push_off;      // FIFO offset of lane n: pushes among lanes 0..n-1
    reg  [RW:0]      push_cnt;
    reg  [PW-1:0]    prev_p;
    reg  [RBW-1:0]   lrow;
    integer          n;
    always @* begin
        prev_p   = walked;
        push_cnt = {(RW+1){1'b0}};
        for (n = 0; n < R; n = n + 1) begin
            lrow = pbase + n[RBW-1:0];
            if (lrow < {{(RBW-NW){1'b0}}, rows_r}) lp[n*PW +: PW] = ptr_rdata[n*PW +: PW];
            else lp[n*PW +: PW] = nnz_r;
            push[n] = pv && (lrow < {{(RBW-NW){1'b0}}, rows_r}) && (lp[n*PW +: PW] > prev_p);
            push_row[n*RW +: RW] = lrow[RW-1:0];
            push_off[n*RW +: RW] = push_cnt[RW-1:0];
            push_cnt = push_cnt + {{RW{1'b0}}, push[n]};
            prev_p = lp[n*PW +: PW];
        end
    end

    // ================================================================ segment FIFO
    reg  [RW-1:0]    seg_row [0:SEGD-1];
    reg  [PW-1:0]    seg_end [0:SEGD-1];
    reg  [RW:0]      head, tail;
    wire [RW:0]      count = tail - head;

    // the window: the first L entries
    reg  [L*RW-1:0]  win_row;
    reg  [L*EW-1:0]  win_end;
    reg  [L-1:0]     win_v;
    reg  [RW-1:0]    widx;
    integer          k;
    always @* begin
        for (k = 0; k < L; k = k + 1) begin
            widx = head[RW-1:0] + k[RW-1:0];
            win_row[k*RW +: RW] = seg_row[widx];
            win_end[k*EW +: EW] = {{(EW-PW){1'b0}}, seg_end[widx]};
            win_v[k] = ({{(32-RW-1){1'b0}}, count} > k);
        end
    end

    // ================================================================ wave issuer
    reg  [EW-1:0]    wbase;         // first nonzero of the next wave (w * L)
    reg  [NAW-1:0]   wave;          // its number: the index-buffer word read ahead
    wire [EW-1:0]    nnz_e   = {{(EW-PW){1'b0}}, nnz_r};
    wire [EW-1:0]    wtop    = wbase + L_STEP;
    wire [EW-1:0]    e_end   = (wtop < nnz_e) ? wtop : nnz_e;
    wire             can_issue = run && (wbase < nnz_e) && ({{(EW-PW){1'b0}}, walked} >= e_end);
    assign beat_last = (beat == clast);
    wire             lines_free = !active || beat_last;
    assign issue     = lines_free && can_issue;

    wire [L*CW-1:0]  idx_rdata;
    // read ahead: the word of the next wave to issue is on the buffer output at its issue edge
    // (in an issue cycle the following wave's word is addressed: back-to-back issues when C = 1)
    assign nz_re    = run;
    assign nz_raddr = issue ? wave + 1'b1 : wave;
    sram_dp #(.WIDTH(L*CW), .DEPTH(ND), .AW(NAW)) u_idxbuf (
        .clk(clk), .we(idx_we), .waddr(idx_waddr), .wdata(idx_wdata),
        .re(nz_re), .raddr(nz_raddr), .rdata(idx_rdata));

    // line l takes nonzero e = wbase + l: its row is that of the first window entry ending after e
    reg  [L-1:0]     nv;
    reg  [L*RW-1:0]  nrow;
    reg  [L*CW-1:0]  ncol;
    reg  [RW:0]      pop_cnt;
    reg              n_last_cont;
    reg  [EW-1:0]    e;
    reg              found;
    integer          l, j;
    always @* begin
        pop_cnt     = {(RW+1){1'b0}};
        n_last_cont = 1'b1;
        for (j = 0; j < L; j = j + 1) begin
            if (win_v[j] && (win_end[j*EW +: EW] <= e_end)) pop_cnt = pop_cnt + 1'b1;
            if (win_v[j] && (win_end[j*EW +: EW] == e_end)) n_last_cont = 1'b0;
        end
        for (l = 0; l < L; l = l + 1) begin
            e     = wbase + l[EW-1:0];
            nv[l] = (e < nnz_e);
            nrow[l*RW +: RW] = {RW{1'b0}};
            found = 1'b0;
            for (j = 0; j < L; j = j + 1) begin
                if (!found && win_v[j] && (win_end[j*EW +: EW] > e)) begin
                    nrow[l*RW +: RW] = win_row[j*RW +: RW];
                    found = 1'b1;
                end
            end
            if (!nv[l]) nrow[l*RW +: RW] = {RW{1'b0}};
            ncol[l*CW +: CW] = nv[l] ? idx_rdata[l*CW +: CW] : {CW{1'b0}};
        end
    end

    // ================================================================ registers
    integer s;
    always @(posedge clk) begin
        if (rst) begin
            run      <= 1'b0;
            empty_go <= 1'b0;
            active   <= 1'b0;
            pv       <= 1'b0;
        end else if (start_ok) begin
            // edge 0: header, walker and issuer reset; word 0 of both buffers addressed next
            rows_r       <= rows;
            nnz_r        <= nnz;
            clast        <= clast_n;
            mask_last    <= mask_last_n;
            run          <= (nnz != {PW{1'b0}});
            empty_go     <= (nnz == {PW{1'b0}});
            rbase        <= {RBW{1'b0}};
            blk          <= {PAW{1'b0}};
            pv           <= 1'b0;
            walked       <= {PW{1'b0}};
            head         <= {(RW+1){1'b0}};
            tail         <= {(RW+1){1'b0}};
            wbase        <= {EW{1'b0}};
            wave         <= {NAW{1'b0}};
            active       <= 1'b0;
            beat         <= {BW{1'b0}};
            w_last_cont  <= 1'b0;
        end else begin
            empty_go <= 1'b0;
            if (finish) run <= 1'b0;
            // walker
            pv    <= ptr_re;
            pbase <= rbase;
            if (ptr_re) begin
                rbase <= rbase + R_STEP;
                blk   <= blk + 1'b1;
            end
            if (pv) walked <= lp[(R-1)*PW +: PW];
            for (s = 0; s < R; s = s + 1) begin
                if (push[s]) begin
                    seg_row[tail[RW-1:0] + push_off[s*RW +: RW]] <= push_row[s*RW +: RW];
                    seg_end[tail[RW-1:0] + push_off[s*RW +: RW]] <= lp[s*PW +: PW];
                end
            end
            tail <= tail + push_cnt;
            // issuer and beat counter
            if (issue) begin
                ln_valid     <= nv;
                ln_row       <= nrow;
                ln_col       <= ncol;
                w_first_cont <= w_last_cont;
                w_last_cont  <= n_last_cont;
                w_final      <= (wtop >= nnz_e);
                wbase        <= wtop;
                wave         <= wave + 1'b1;
                head         <= head + pop_cnt;
                active       <= 1'b1;
                beat         <= {BW{1'b0}};
            end else if (lines_free) begin
                active <= 1'b0;
            end else begin
                beat <= beat + 1'b1;
            end
        end
    end

    assign lane_mask = beat_last ? mask_last : {W{1'b1}};
endmodule
`default_nettype wire
